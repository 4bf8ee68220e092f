# Runs inside the VM as root of the guest: mounts the raw virtio-fs tree (the same tag again)
# and tries to escape it or change what it must not. Every attempt must fail; the host test then
# checks that nothing outside the served directories changed.
R=/mnt/raw
pass=0
fail=0
must_fail() {
  desc="$1"; shift
  if "$@" > /tmp/h.out 2>&1; then
    echo "not ok - $desc (succeeded)"; sed 's/^/#   /' /tmp/h.out; fail=$((fail + 1))
  else
    echo "ok - $desc ($(tail -n1 /tmp/h.out))"; pass=$((pass + 1))
  fi
}
mkdir -p $R && mount -t virtiofs strata $R || { echo "not ok - mount raw tree"; exit 1; }
must_fail "write into a layer" sh -c "echo x > $R/layers/0/data/top.txt"
must_fail "create in a layer" sh -c "echo x > $R/layers/1/newfile"
must_fail "delete from a layer" rm $R/layers/1/data/base.txt
must_fail "chmod in a layer" chmod 777 $R/layers/1/data/base.txt
must_fail "write the plan" sh -c "echo {} > $R/plan.json"
must_fail "create at the tree root" mkdir $R/evil
must_fail "hard link a layer file into upper" ln $R/layers/1/data/base.txt $R/upper/stolen
must_fail "rename a layer file into upper" mv $R/layers/1/data/base.txt $R/upper/stolen2
must_fail "escape with .." cat $R/../../../../etc/hostname-of-host-marker
must_fail "escape with .. below a layer" cat $R/layers/0/../../../outside/secret
# Device nodes the guest makes in its upper are allowed (as in Docker) and are the guest's own
# devices: 8:0 is no disk in this guest, and the daemon never opens a device node.
mknod $R/upper/sda b 8 0 || { echo "not ok - mknod b 8 0 in upper"; fail=$((fail + 1)); }
must_fail "read a block device made in upper (no 8:0 in this guest)" head -c 1 $R/upper/sda
rm -f $R/upper/sda
# Device nodes are opened by the guest kernel's own drivers, never by the daemon: the layer's
# char 1:3 node is the guest's /dev/null (reads nothing), not a host device.
if [ "$(head -c 16 $R/layers/1/data/devnull | wc -c)" = 0 ]; then
  echo "ok - a device node shipped in a layer is the guest's own device"; pass=$((pass + 1))
else
  echo "not ok - a device node shipped in a layer returned data"; fail=$((fail + 1))
fi
must_fail "set a trusted.* xattr outside overlay" strata guest probe xattr-set $R/upper trusted.evil 1
ln -s / $R/upper/rootlink
must_fail "follow an upper symlink to / on the host" cat $R/upper/rootlink/outside-marker
echo "summary: $pass passed, $fail failed"
[ "$fail" = 0 ]
