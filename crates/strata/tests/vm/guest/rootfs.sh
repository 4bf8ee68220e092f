# Runs inside the VM as the container command, in the rootfs strata assembled with the guest's
# own overlayfs over virtio-fs. Prints TAP-like lines; the host test reads them, then checks the
# upper dir and a host overlay mount of the same layers (the oracle) against the manifest below.
D=/data
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

check "read a bottom-layer file" eq "$(cat $D/base.txt)" base
check "read a top-layer file" eq "$(cat $D/top.txt)" top
check "top layer shadows bottom" eq "$(cat $D/both.txt)" top-version
check "whiteout in top layer hides a bottom file" test ! -e $D/deleted_by_top
check "opaque dir in top layer hides bottom entries" eq "$(ls $D/opq)" new
check "file in top layer hides a bottom dir" eq "$(cat $D/becomes_file)" "file over a dir"
check "dir in top layer hides a bottom file" eq "$(ls $D/becomes_dir)" x
check "whiteout in top layer hides a bottom dir" test ! -e $D/gone_dir
check "the layers come as one merged lower (/lower) from the layer device" grep -q "lowerdir=/run/strata/strata-lower.layers/lower," /proc/mounts
check "append to a lower file (copy-up)" sh -c "echo more >> $D/append.txt && [ \"\$(cat $D/append.txt)\" = \"\$(printf 'first\nmore')\" ]"
check "delete a lower file (whiteout)" sh -c "rm $D/todelete && [ ! -e $D/todelete ]"
check "rmdir a lower dir and recreate it (opaque)" sh -c "rm -rf $D/replaceme && mkdir $D/replaceme && echo fresh > $D/replaceme/fresh && [ \"\$(ls $D/replaceme)\" = fresh ]"
check "rename a lower file" sh -c "mv $D/rename_me $D/renamed && [ ! -e $D/rename_me ] && [ \"\$(cat $D/renamed)\" = r ]"
check "rename a lower dir" sh -c "mv $D/dir_to_move $D/moved_dir && [ -f $D/moved_dir/inner ] && [ ! -e $D/dir_to_move ]"
check "rename a new dir" sh -c "mkdir $D/newdir && touch $D/newdir/f && mv $D/newdir $D/newdir2 && [ -f $D/newdir2/f ]"
check "read through a lower symlink" eq "$(cat $D/sym)" base
check "create a symlink" sh -c "ln -s top.txt $D/newsym && [ \"\$(readlink $D/newsym)\" = top.txt ] && [ \"\$(cat $D/newsym)\" = top ]"
check "lower hard links share an inode" eq "$(stat -c %i $D/hl_a)" "$(stat -c %i $D/hl_b)"
check "new hard link" sh -c "echo h > $D/h1 && ln $D/h1 $D/h2 && [ \"\$(stat -c %h $D/h1)\" = 2 ] && echo x >> $D/h2 && [ \"\$(tail -n1 $D/h1)\" = x ]"
check "chmod a lower file" sh -c "chmod 600 $D/chmod_me && [ \"\$(stat -c %a $D/chmod_me)\" = 600 ]"
check "chown a lower file" sh -c "chown 1000:1000 $D/chown_me && [ \"\$(stat -c %u:%g $D/chown_me)\" = 1000:1000 ]"
check "truncate a lower file (copy-up)" sh -c "truncate -s 3 $D/trunc_me && [ \"\$(cat $D/trunc_me)\" = abc ]"
check "hard link a lower file (copy-up, then link)" sh -c "ln $D/base.txt $D/base_link && [ \"\$(stat -c %h $D/base_link)\" = 2 ] && [ \"\$(cat $D/base_link)\" = base ]"
check "write one name of a lower hard link" sh -c "echo more >> $D/hl2_a && [ \"\$(tail -n1 $D/hl2_a)\" = more ]"
check "utimes" sh -c "touch -d '2001-02-03 04:05:06' $D/top.txt && [ \"\$(stat -c %Y $D/top.txt)\" = \"\$(date -d '2001-02-03 04:05:06' +%s)\" ]"
check "user xattr set and read back" sh -c "strata guest probe xattr-set $D/base.txt user.strata hello && [ \"\$(strata guest probe xattr-get $D/base.txt user.strata)\" = hello ]"
check "mmap write" sh -c "echo 0123456789 > $D/mm && strata guest probe mmap-write $D/mm 2 AB && [ \"\$(cat $D/mm)\" = 01AB456789 ]"
check "64 MiB written and read back by checksum" sh -c "dd if=/dev/urandom of=$D/big bs=1M count=64 2>/dev/null && a=\$(md5sum < $D/big) && sync && echo 3 > /proc/sys/vm/drop_caches && b=\$(md5sum < $D/big) && [ \"\$a\" = \"\$b\" ]"
check "1000 small files" sh -c "mkdir $D/many && i=0 && while [ \$i -lt 1000 ]; do echo \$i > $D/many/f\$i; i=\$((i + 1)); done && [ \$(ls $D/many | wc -l) = 1000 ] && [ \"\$(cat $D/many/f999)\" = 999 ]"
check "fsync" sh -c "echo durable > $D/synced && sync $D/synced"
sync
echo "big-md5 $(md5sum < $D/big | cut -d' ' -f1)"
echo "manifest-begin"
sh /manifest.sh $D many
echo "manifest-end"
echo "summary: $pass passed, $fail failed"
[ "$fail" = 0 ]
