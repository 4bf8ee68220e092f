# Runs inside the VM as the container command (root of the guest), on the rootfs strata
# assembled: file semantics a local filesystem has and ordinary software relies on (apt, dpkg,
# useradd and Python's tempfile open with O_NOFOLLOW; installers create set-id files and device
# nodes). Prints TAP-like lines; `info` lines record behaviour that is not asserted.
D=/data
P="strata guest probe open"
pass=0
fail=0
check() {
  desc="$1"; shift
  if "$@" > /tmp/check.out 2>&1; then
    echo "ok - $desc"; pass=$((pass + 1))
  else
    echo "not ok - $desc"; sed 's/^/#   /' /tmp/check.out; fail=$((fail + 1))
  fi
}
eq() { [ "$1" = "$2" ] || { echo "expected [$2] got [$1]"; return 1; }; }
info() { echo "info - $1: $2"; }

# O_NOFOLLOW on every kind of file (the open re-opens the held O_PATH fd through /proc).
check "O_NOFOLLOW read of a lower file" eq "$($P rdonly,nofollow $D/lower.txt)" "ok 644"
check "O_NOFOLLOW write of a lower file (copy-up)" eq "$($P wronly,append,nofollow $D/lower_rw.txt)" "ok 640"
echo u > $D/upper.txt
check "O_NOFOLLOW read+write of an upper file" eq "$($P rdwr,nofollow $D/upper.txt)" "ok 644"
check "O_CREAT|O_EXCL|O_NOFOLLOW of a new file" eq "$($P wronly,creat,excl,nofollow $D/new.txt 600)" "ok 600"
check "O_CREAT|O_NOFOLLOW of an existing file" eq "$($P wronly,creat,nofollow $D/new.txt 600)" "ok 600"
check "openat O_NOFOLLOW of a lower file" eq "$($P rdonly,nofollow lower.txt --at $D)" "ok 644"
check "openat O_CREAT|O_NOFOLLOW of a new file" eq "$($P rdwr,creat,nofollow new_at.txt 640 --at $D)" "ok 640"
check "O_NOFOLLOW|O_DIRECTORY of an image dir" eq "$($P rdonly,nofollow,directory $D/lowerdir)" "ok 755"
check "O_NOFOLLOW of a lower symlink is ELOOP" eq "$($P rdonly,nofollow $D/sym)" ELOOP
ln -s upper.txt $D/usym
check "O_NOFOLLOW of an upper symlink is ELOOP" eq "$($P rdonly,nofollow $D/usym)" ELOOP
check "O_CREAT|O_NOFOLLOW of a symlink is ELOOP" eq "$($P wronly,creat,nofollow $D/usym)" ELOOP
check "the symlink still reads through" eq "$(cat $D/sym)" lower

# The guest's umask is applied once (by the guest), never again by the daemon.
check "create 0777 under umask 0" eq "$($P wronly,creat,excl $D/m777 777 --umask 0)" "ok 777"
check "create 0666 under umask 027" eq "$($P wronly,creat,excl $D/m640 666 --umask 027)" "ok 640"
check "mkdir and mkfifo under umask 0" sh -c "umask 0 && mkdir $D/d777 && mkfifo $D/p666 && [ \"\$(stat -c %a $D/d777 $D/p666 | tr '\n' ' ')\" = '777 666 ' ]"

# A guest user creates with its own credentials: owner, group and set-id bits as asked.
mkdir -m 1777 $D/shared
check "set-id bits of a file a user creates" eq "$($P wronly,creat,excl $D/shared/suid 6755 --as 1000:1000 --umask 022)" "ok 6755"
check "owner of a file a user creates" eq "$(stat -c %u:%g:%a $D/shared/suid)" "1000:1000:6755"
check "a user creates in a dir only it may write" sh -c "mkdir $D/home && chown 1000:1000 $D/home && chmod 700 $D/home && [ \"\$($P wronly,creat,excl $D/home/f 600 --as 1000:1000)\" = 'ok 600' ]"

# A write or O_TRUNC open by a user without CAP_FSETID takes set-id bits away (set-group-ID only
# with group execute), as on a local filesystem; root's write keeps them.
touch $D/shared/w $D/shared/wg $D/shared/t $D/shared/r
chmod 6777 $D/shared/w $D/shared/t && chmod 2766 $D/shared/wg && chmod 6755 $D/shared/r
check "a user's write clears set-id bits" eq "$($P wronly,append $D/shared/w --as 1000:1000 --write x)" "ok 777"
check "a user's write keeps set-group-ID without group execute" eq "$($P wronly,append $D/shared/wg --as 1000:1000 --write x)" "ok 2766"
check "a user's O_TRUNC open clears set-id bits" eq "$($P wronly,trunc $D/shared/t --as 1000:1000)" "ok 777"
check "root's write keeps set-id bits" eq "$($P wronly,append $D/shared/r --write x)" "ok 6755"
check "set-id bits after the writes, seen again" eq "$(stat -c %a $D/shared/w $D/shared/wg $D/shared/t $D/shared/r | tr '\n' ' ')" "777 2766 777 6755 "

# `.` and `..` of a directory that exists only in the image.
check "ls -a of an image-only dir lists . and .." eq "$(ls -a $D/lowerdir | tr '\n' ' ')" ". .. inner "

# Device nodes: the guest's root makes them (its own devices); image ones survive copy-up.
check "mknod c 1 3 in the container" sh -c "mknod $D/mynull c 1 3 && echo x > $D/mynull && [ -z \"\$(cat $D/mynull)\" ]"
check "mknod b 7 0 in the container" sh -c "mknod $D/myloop b 7 0 && [ -b $D/myloop ]"
check "chmod of an image device node (copy-up)" sh -c "chmod 600 $D/devnull && [ \"\$(stat -c %a:%t:%T $D/devnull)\" = 600:1:3 ]"

# Open flags passed through to the host re-open.
check "O_APPEND|O_TRUNC" sh -c "[ \"\$($P wronly,append,trunc $D/upper.txt)\" = 'ok 644' ] && [ ! -s $D/upper.txt ]"
check "O_NOATIME read" eq "$($P rdonly,noatime $D/lower.txt)" "ok 644"
check "O_SYNC and O_DSYNC writes" sh -c "[ \"\$($P wronly,sync $D/upper.txt)\" = 'ok 644' ] && [ \"\$($P wronly,dsync $D/upper.txt)\" = 'ok 644' ]"
info "O_DIRECT write of an upper file" "$($P wronly,direct $D/upper.txt)"
info "O_TMPFILE in the container" "$($P rdwr,tmpfile $D 600)"

# A sparse file past 4 GiB: 1 MiB written at a 5000 MiB offset, read back.
check "write and read past 4 GiB (sparse)" sh -c "dd if=/dev/urandom of=/tmp/blk bs=1M count=1 2>/dev/null && dd if=/tmp/blk of=$D/sparse bs=1M seek=5000 count=1 conv=notrunc 2>/dev/null && [ \"\$(stat -c %s $D/sparse)\" = 5243928576 ] && sync && echo 3 > /proc/sys/vm/drop_caches && [ \"\$(tail -c 1048576 $D/sparse | md5sum)\" = \"\$(md5sum < /tmp/blk)\" ]"

# Hard links: a second name of an upper file, the first name removed (pjdfstest link/00).
mkdir $D/hl
echo h > $D/hl/a && ln $D/hl/a $D/hl/b && stat -c %h $D/hl/b > /dev/null && rm $D/hl/a
info "hard link, first name unlinked: stat the second at once" "$(stat -c %h $D/hl/b 2>&1)"
sleep 2
info "hard link, first name unlinked: stat the second 2 s later" "$(stat -c %h $D/hl/b 2>&1)"
echo h > $D/hl/c && ln $D/hl/c $D/hl/d && sleep 2 && stat -c %h $D/hl/d > /dev/null && sleep 2 && rm $D/hl/c && sleep 2
info "hard link, 2 s between steps: stat the second" "$(stat -c %h $D/hl/d 2>&1)"
info "hard link, 2 s between steps: cat the second" "$(cat $D/hl/d 2>&1)"
info "hard link, 2 s between steps: ls" "$(ls $D/hl 2>&1 | tr '\n' ' ')"
info "lower layers" "$(grep -o 'lowerdir=[^,]*' /proc/mounts | head -n1)"
sync
echo "summary: $pass passed, $fail failed"
[ "$fail" = 0 ]
