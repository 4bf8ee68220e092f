# strata lab, inside the guest (the container command of a strata-served rootfs).
# Usage: sh /lab.sh SCENARIO N COUNT INTERVAL_MS CYCLES
# Prints machine-readable lines the host parses:
#   @phase TEXT            progress
#   @vmstat TAG k v ...    reclaim counters (/proc/vmstat)
#   @psi TAG ...           /proc/pressure/memory
#   @bench PHASE STRATEGY {json}
#   @check {json}          this kernel's shrinker lock (strata trace --check --json)
#   @trace {json}          strata trace over the pressure phase (rwsem kernels only)
#   @trace-report TEXT     its human report, line by line
SC=$1; N=$2; COUNT=$3; INTERVAL=$4; CYCLES=$5
STRATEGIES="overlay-mount tmpfs-mount strata strata-daemon"
echo "@check $(strata trace --check --json)"
mkdir -p /lab /mnt/disk
mount -t tmpfs -o size=64m tmpfs /lab || { echo "@fatal cannot mount tmpfs on /lab"; exit 1; }
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 /dev/vda /mnt/disk || { echo "@fatal cannot mount the scratch disk /dev/vda"; exit 1; }
snap() {
  echo "@vmstat $1 $(grep -E '^(pgscan_kswapd|pgscan_direct|pgsteal_kswapd|pgsteal_direct|slabs_scanned|allocstall_[a-z0-9]+) ' /proc/vmstat | tr '\n' ' ')"
  echo "@psi $1 $(tr '\n' ' ' < /proc/pressure/memory)"
}
# run_benches PHASE MAX EXTRA...: one bench process per strategy, all at once.
run_benches() {
  phase=$1; max=$2; shift 2
  pids=""
  for s in $STRATEGIES; do
    strata bench create --dir /lab/b-$s --n "$max" --strategy $s --json --samples \
      --interval-ms "$INTERVAL" "$@" > /lab/$phase-$s.json 2> /lab/$phase-$s.err &
    pids="$pids $!"
    # Benches run at a higher priority than the pressure generator, so that what they measure
    # is lock waits, not a starved vCPU (TCG has no spare cores). busybox has renice, no nice.
    renice -10 -p $! > /dev/null
  done
}
collect() {
  for p in $pids; do wait $p; done
  for s in $STRATEGIES; do
    if [ -s /lab/$1-$s.json ]; then echo "@bench $1 $s $(cat /lab/$1-$s.json)"; else echo "@error $1 $s $(cat /lab/$1-$s.err)"; fi
  done
}
# One reclaim cycle. The script's own shell runs at nice 19 from the pressure phase on (see
# below), so these run below the benches.
pressure_cycle() {
  case $SC in
    dentries)
      # One drop_caches may leave the negative dentries cached: drop_slab walks the
      # shrinkers after only a down_read_trylock of shrinker_rwsem, so while a bench's mount
      # holds or waits for it the pass does nothing (slabs_scanned 22 instead of ~400 k), and
      # a dentry referenced since it joined the LRU is only rotated on a pass. Repeat until
      # they are gone (field 5 of dentry-state), so that every cycle reclaims them.
      k=0
      while :; do
        echo 2 > /proc/sys/vm/drop_caches
        set -- $(cat /proc/sys/fs/dentry-state)
        if [ "$5" -lt $((COUNT / 2)) ] || [ $k -ge 50 ]; then break; fi
        k=$((k + 1))
      done
      [ $k -gt 0 ] && echo "@phase drop_caches repeated $k times until the dentries were gone"
      strata lab-guest dentries /mnt/disk/neg "$COUNT" ;;
    pagecache)
      dd if=/dev/zero of=/mnt/disk/fill bs=1M count=1500 2>/dev/null
      rm -f /mnt/disk/fill
      strata lab-guest dentries /mnt/disk/neg "$COUNT" ;;
    memcg)
      # Each small cgroup fills its limit with dentries and page cache: memcg reclaim then
      # runs the memcg-aware superblock shrinkers under shrinker_rwsem, cgroup by cgroup.
      j=1
      cg_pids=""
      while [ $j -le $MEMCGS ]; do
        sh -c "echo \$\$ > /sys/fs/cgroup/lab$j/cgroup.procs &&
               strata lab-guest dentries /mnt/disk/cg$j $((COUNT / MEMCGS)) > /dev/null &&
               dd if=/dev/zero of=/mnt/disk/cg$j.fill bs=1M count=96 2> /dev/null; rm -f /mnt/disk/cg$j.fill" &
        cg_pids="$cg_pids $!"
        j=$((j + 1))
      done
      # Not a bare `wait`: that would also wait for the benches, which run until /lab/stop.
      for p in $cg_pids; do wait $p; done ;;
  esac
}

echo "@phase idle baseline ($N starts per strategy)"
snap idle-start
run_benches idle "$N"
collect idle
snap idle-end

echo "@phase building pressure: $SC ($COUNT negative dentries on ext4)"
[ "$SC" = pagecache ] && echo 1000 > /proc/sys/vm/watermark_scale_factor
MEMCGS=8
if [ "$SC" = memcg ]; then
  grep -q cgroup2 /proc/mounts || mount -t cgroup2 none /sys/fs/cgroup
  echo +memory > /sys/fs/cgroup/cgroup.subtree_control
  j=1
  while [ $j -le $MEMCGS ]; do
    mkdir -p /sys/fs/cgroup/lab$j && echo 48M > /sys/fs/cgroup/lab$j/memory.max
    j=$((j + 1))
  done
fi
renice 19 -p $$ > /dev/null
strata lab-guest dentries /mnt/disk/neg "$COUNT"
echo "@phase measuring under pressure ($CYCLES reclaim cycles)"
snap pressure-start
# The tracer (rwsem kernels: --check --exit-code says 5) runs through the pressure phase, above
# the pressure generator, in its default mode; /lab-trace-args adds flags (strata lab passes
# STRATA_LAB_TRACE, e.g. "--naive" for the naive bpftrace comparison, "--detail").
TRACE_PID=""
TRACE_ARGS=$(cat /lab-trace-args 2>/dev/null)
strata trace --check --exit-code > /dev/null
if [ $? -eq 5 ]; then
  # shellcheck disable=SC2086
  strata trace --min-wait 10 $TRACE_ARGS --output /lab/trace.json > /lab/trace.txt 2>&1 &
  TRACE_PID=$!
  renice -5 -p $TRACE_PID > /dev/null
  # Pressure only once the probes are attached (loading BPF programs takes seconds under TCG).
  i=0; while ! grep -q "strata trace: tracing" /lab/trace.txt && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
fi
rm -f /lab/stop
run_benches pressure 50000 --until /lab/stop
c=1
while [ $c -le "$CYCLES" ]; do
  echo "@phase reclaim cycle $c/$CYCLES"
  pressure_cycle
  c=$((c + 1))
done
touch /lab/stop
collect pressure
snap pressure-end
if [ -n "$TRACE_PID" ]; then
  kill -TERM $TRACE_PID; wait $TRACE_PID
  if [ -s /lab/trace.json ]; then echo "@trace $(cat /lab/trace.json)"; fi
  sed 's/^/@trace-report /' /lab/trace.txt
fi
echo "@phase done"
