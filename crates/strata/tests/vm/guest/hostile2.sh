# Runs inside the VM (hostile.rs) against the raw virtio-fs tree, with `strata serve
# --max-nodes 1000 --max-handles 64`: races between rename and open with a symlink to a host
# path, renames and links into layers, device nodes an image ships, xattr namespaces, and
# exhausting the daemon's nodes and handles. Each attempt must fail cleanly and the daemon keep
# serving. TAP-like lines; the host test checks the daemon log, the layers and the host secret.
R=/mnt/raw
pass=0
fail=0
ok() { echo "ok - $1"; pass=$((pass + 1)); }
notok() { echo "not ok - $1"; fail=$((fail + 1)); }
must_fail() {
  desc="$1"; shift
  if "$@" > /tmp/h.out 2>&1; then
    notok "$desc (succeeded)"; sed 's/^/#   /' /tmp/h.out
  else
    ok "$desc ($(tail -n1 /tmp/h.out))"
  fi
}
check() {
  desc="$1"; shift
  if "$@" > /tmp/h.out 2>&1; then ok "$desc"; else notok "$desc"; sed 's/^/#   /' /tmp/h.out; fi
}
# Scratch files in guest memory: while the daemon's limits are exhausted, /tmp on the served
# tree could not be written either.
mount -t tmpfs guest-tmp /tmp || { echo "not ok - guest tmpfs"; exit 1; }
mkdir -p $R && mount -t virtiofs strata $R || { echo "not ok - mount raw tree"; exit 1; }
SECRET_PATH=$(cat /host_secret_path)

# 1. rename vs open: the name `t` flips between a file and a symlink to a host path while
# readers open it. The daemon opens the inode it looked up, never a path: a reader sees the
# file, or the guest resolves the symlink in the guest (no such file), never the host file.
mkdir $R/upper/race
echo good > $R/upper/race/t
ln -s "$SECRET_PATH" $R/upper/race/evil
( i=0; while [ $i -lt 60 ]; do
    mv $R/upper/race/t $R/upper/race/held; mv $R/upper/race/evil $R/upper/race/t
    mv $R/upper/race/t $R/upper/race/evil; mv $R/upper/race/held $R/upper/race/t
    i=$((i + 1)); done; echo done > /tmp/race.done ) &
( while [ ! -e /tmp/race.done ]; do cat $R/upper/race/t 2>/dev/null; done > /tmp/race.out ) &
wait
if grep -q HOST-SECRET /tmp/race.out; then notok "rename/open race reached the host file"; else ok "rename/open race never reached the host file ($(grep -c good /tmp/race.out) reads of the file)"; fi
must_fail "open a symlink to a host path through the raw tree" cat $R/upper/race/evil
must_fail "rename an upper file into a layer" mv $R/upper/race/t $R/layers/0/stolen
must_fail "hard link an upper file into a layer" ln $R/upper/race/t $R/layers/0/stolen
must_fail "rename an upper dir over the tree root's layers" mv $R/upper/race $R/layers
must_fail "rename a layer dir into work" mv $R/layers/1/data $R/work/data

# 2. Device nodes an image ships are the guest's own devices: a host-only block device (8:0)
# and /dev/kvm's numbers (10:232) open nothing in this guest; the daemon never opens them.
must_fail "read a block device node shipped in a layer" head -c 1 $R/layers/1/data/sda
must_fail "read a /dev/kvm node shipped in a layer" head -c 1 $R/layers/1/data/kvm
must_fail "read the same node through the overlay" head -c 1 /data/kvm
must_fail "copy a device node into upper as a device (--no-device-nodes)" mknod $R/upper/kvm c 10 232

# 3. xattrs outside the allowed namespaces or on a layer.
must_fail "set trusted.overlay.opaque on a layer dir" strata guest probe xattr-set $R/layers/1/data trusted.overlay.opaque y
must_fail "set a user.* xattr on a layer file" strata guest probe xattr-set $R/layers/1/data/base.txt user.x 1
must_fail "set a trusted.* xattr that is not overlay's" strata guest probe xattr-set $R/upper/race trusted.strata 1

# 4. Nodes: 1500 files in a layer dir, more than --max-nodes. `ls -l` looks each up and the
# guest kernel holds them; past the limit the lookups fail with ENFILE. (Only shell builtins
# until the guest lets go: running a program needs a lookup and an open too.)
echo 3 > /proc/sys/vm/drop_caches
ls -l $R/layers/1/many > /dev/null 2> /tmp/ls.err
# The guest forgets the inodes it evicts: the daemon frees the nodes and serves again.
echo 3 > /proc/sys/vm/drop_caches
i=0; while [ $i -lt 100000 ]; do i=$((i + 1)); done
n=$(grep -c "Too many open files in system" /tmp/ls.err)
if [ "$n" -gt 0 ]; then ok "lookups past the node limit fail with ENFILE ($n refused)"; else notok "no ENFILE past the node limit"; head -n3 /tmp/ls.err; fi
check "after the guest forgets, lookups work again" ls -l $R/layers/1/many/f1499 $R/upper/race/t

# 5. Handles: one process opens 100 files and keeps them (tail -f); past --max-handles the
# opens fail with ENFILE, and so does any other open, until it lets them go.
tail -f $(i=0; while [ $i -lt 100 ]; do echo $R/layers/1/many/f$i; i=$((i + 1)); done) > /dev/null 2> /tmp/tail.err &
tailpid=$!
i=0; while [ ! -s /tmp/tail.err ] && [ $i -lt 2000000 ]; do i=$((i + 1)); done
i=0; while [ $i -lt 100000 ]; do i=$((i + 1)); done
if (read x < $R/upper/race/t) 2>/dev/null; then held=no; else held=yes; fi
kill $tailpid; wait $tailpid 2>/dev/null
n=$(grep -c "Too many open files in system" /tmp/tail.err)
if [ "$n" -gt 0 ]; then ok "opens past the handle limit fail with ENFILE ($n refused)"; else notok "no ENFILE past the handle limit"; head -n3 /tmp/tail.err; fi
if [ $held = yes ]; then ok "another open fails while the handles are exhausted"; else notok "an open succeeded while the handles were exhausted"; fi
check "after the handles are released, opens work again" sh -c "[ \"\$(cat $R/upper/race/t)\" = good ]"
check "the daemon still serves writes" sh -c "echo still > $R/upper/after && [ \"\$(cat $R/upper/after)\" = still ]"
echo "summary: $pass passed, $fail failed"
[ "$fail" = 0 ]
