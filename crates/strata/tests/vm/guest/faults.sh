# Runs inside the VM as the container command (the guest's overlay over virtio-fs), for the
# fault tests in faults.rs. `sh /faults.sh MODE`; prints TAP-like lines and markers the host
# acts on.
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
md5() { md5sum < "$1" | cut -d' ' -f1; }
finish() { echo "summary: $pass passed, $fail failed"; [ "$fail" = 0 ]; }

case "$1" in
write)
  # Write and fsync files one after another (the host SIGKILLs strata serve meanwhile), with
  # unsynced writes in between. "fsynced NAME MD5" is printed only after fsync returned.
  mkdir -p $D/fsynced $D/loose
  i=0
  while [ $i -lt 500 ]; do
    i=$((i + 1))
    dd if=/dev/urandom of=$D/fsynced/f$i bs=64k count=4 2>/dev/null || { echo "write failed at f$i"; break; }
    sync $D/fsynced/f$i || { echo "fsync failed at f$i"; break; }
    echo "fsynced f$i $(md5 $D/fsynced/f$i)"
    dd if=/dev/urandom of=$D/loose/g$i bs=64k count=2 2>/dev/null
  done
  ;;
check)
  # After a restart of strata serve on the same upper/work: what the first VM fsync'd.
  for f in $D/fsynced/*; do echo "have $(basename $f) $(md5 $f)"; done
  check "write and fsync after the restart" sh -c "echo fresh > $D/after-restart && sync $D/after-restart && [ \"\$(cat $D/after-restart)\" = fresh ]"
  check "copy-up after the restart" sh -c "echo more >> /etc/passwd && tail -n1 /etc/passwd | grep -q more"
  finish
  ;;
busy)
  # Keep requests in flight until the host kills qemu.
  mkdir -p $D/busy
  echo "busy"
  n=0
  while :; do
    n=$((n + 1))
    dd if=/dev/urandom of=$D/busy/b$((n % 8)) bs=64k count=16 2>/dev/null &
    find / -xdev > /dev/null 2>&1 &
    cat /bin/busybox > /dev/null
    wait
  done
  ;;
enospc)
  # The upper dir is on a 16 MiB tmpfs. Fill it in 256 KiB steps: every dd that reported
  # success must be in the file; the one that failed must fail with ENOSPC, not EIO.
  # /tmp is on the same full upper: keep the error messages in the guest's own memory.
  mount -t tmpfs guest-tmp /tmp || { echo "not ok - guest tmpfs for /tmp"; exit 1; }
  orig=$(md5 $D/lower1m)
  : > $D/fill
  ok=0
  while dd if=/dev/zero bs=256k count=1 >> $D/fill 2> /tmp/dd.err; do
    ok=$((ok + 1))
    [ $ok -gt 200 ] && break
  done
  cat /tmp/dd.err
  size=$(stat -c %s $D/fill)
  echo "fill: $ok writes succeeded, size $size"
  check "a full upper reports ENOSPC to the guest" grep -q "No space left on device" /tmp/dd.err
  check "every write reported done is in the file" [ "$size" -ge $((ok * 262144)) ]
  check "nothing beyond the failed write" [ "$size" -lt $(((ok + 1) * 262144)) ]
  check "a copy-up that does not fit fails with ENOSPC" sh -c "! (echo x >> $D/lower1m) 2> /tmp/cu.err; cat /tmp/cu.err; grep -q 'No space left on device' /tmp/cu.err"
  check "the lower file is unchanged after the failed copy-up" [ "$(md5 $D/lower1m)" = "$orig" ]
  check "a new file gets ENOSPC too" sh -c "! dd if=/dev/zero of=$D/more bs=1M count=1 2> /tmp/m.err; cat /tmp/m.err; grep -q 'No space left on device' /tmp/m.err"
  check "fsync on the full filesystem still answers" sync $D/fill
  rm -f $D/fill $D/more
  check "after freeing space, writes work again" sh -c "dd if=/dev/urandom of=$D/fill2 bs=64k count=16 2>/dev/null && sync $D/fill2"
  echo "fill2 $(md5 $D/fill2)"
  check "and the copy-up too" sh -c "echo appended >> $D/lower1m && tail -c 9 $D/lower1m | grep -q appended"
  echo "lower1m $(md5 $D/lower1m)"
  sync
  finish
  ;;
*)
  echo "faults.sh: unknown mode '$1'"; exit 2
  ;;
esac
