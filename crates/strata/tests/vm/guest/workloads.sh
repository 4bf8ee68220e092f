# Runs inside the VM as the container command, on a Debian bookworm image (debootstrap minbase
# + python3-minimal, imported with `strata image import`): ordinary software that opens with
# O_NOFOLLOW, creates set-id and locked files, and unpacks hard links. TAP-like lines; then a
# manifest of what it changed, for the host to compare with an overlay mount of the same dirs.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
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
check "apt-get check" apt-get check
check "dpkg -i of a local .deb" dpkg -i /root/hello-strata.deb
check "dpkg lists it installed" sh -c "dpkg -s hello-strata | grep -q 'Status: install ok installed'"
check "its file is there" sh -c "[ \"\$(cat /usr/share/hello-strata/hello.txt)\" = hello ]"
check "useradd -m" useradd -m -s /bin/sh strata1
check "useradd -m of a second user" useradd -m -s /bin/sh strata2
check "the users exist" sh -c "grep -q '^strata1:' /etc/passwd && grep -q '^strata2:' /etc/shadow && [ -d /home/strata1 ]"
check "userdel -r" userdel -r strata2
check "python3 tempfile.mkstemp" python3 -c "import tempfile, os; fd, p = tempfile.mkstemp(); os.write(fd, b'x'); os.close(fd); os.unlink(p)"
check "python3 tempfile.mkstemp as a user" su -s /bin/sh strata1 -c "python3 -c 'import tempfile; tempfile.mkstemp(dir=\"/home/strata1\")'"
check "tar x with hard links and symlinks" sh -c "mkdir -p /srv/x && tar -xf /root/links.tar -C /srv/x && [ \"\$(stat -c %i /srv/x/t/a)\" = \"\$(stat -c %i /srv/x/t/sub/b)\" ] && [ \"\$(readlink /srv/x/t/c)\" = a ] && [ \"\$(cat /srv/x/t/c)\" = linked ]"
check "apt-get check afterwards" apt-get check
check "dpkg -r" dpkg -r hello-strata
sync
echo "manifest-begin"
for d in /etc /srv /home /usr/share/hello-strata /var/lib/dpkg; do
  [ -e "$d" ] && busybox sh /manifest.sh "$d" info | busybox sed "s|^M \.|M $d|"
done
echo "manifest-end"
echo "summary: $pass passed, $fail failed"
[ "$fail" = 0 ]
