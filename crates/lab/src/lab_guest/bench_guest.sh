#!/bin/sh
# strata bench guest, inside the VM: /init of the bench initramfs (busybox + strata + modules).
# Kernel parameters (all required):
#   bench.setup=virtiofsd|strata|strata-layers|erofs|strata-erofs|strata-upper|strata-union
#                                        how the rootfs under test is mounted at /mnt/root
#                                        (strata-upper: the workloads run in the served upper)
#   bench.workloads=read,walk,...        workloads to run, in this order
#   bench.layers=N                       (erofs) number of layer images: /dev/vda.. in order
#   bench.small=N  bench.seq_mib=M       sizes of the create and write workloads
# Prints lines the host parses:
#   @phase TEXT                          progress
#   @result WORKLOAD SECONDS COUNT BYTES one timed workload
#   @fatal TEXT                          setup failed
# then `strata: command exited with status N` and powers off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
arg() { sed -n "s/.*bench\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
SETUP=$(arg setup); WORKLOADS=$(arg workloads | tr , ' '); LAYERS=$(arg layers)
[ "$WORKLOADS" = none ] && WORKLOADS=""
SMALL=$(arg small); SEQ=$(arg seq_mib)
finish() {
  cd /
  # Unmount (not timed) so a FUSE server sees DESTROY and can report its request counts.
  umount /mnt/root 2> /dev/null
  for m in /run/strata/* /l/*; do umount "$m" 2> /dev/null; done
  umount /scratch 2> /dev/null
  sync
  echo "strata: command exited with status $1"
  poweroff -f
}
fatal() { echo "@fatal $*"; dmesg | tail -n 8; finish 1; }
# Load the modules in the listed order; a built-in or already loaded one fails harmlessly.
while read -r m; do insmod "/lib/modules/$m" 2> /dev/null; done < /lib/modules/order
wait_dev() {
  t=0; while [ ! -b "$1" ] && [ $t -lt 100 ]; do sleep 0.05; t=$((t + 1)); done
  [ -b "$1" ] || fatal "no block device $1"
}
mkdir -p /mnt/root
case $SETUP in
  virtiofsd)
    mount -t virtiofs bench /mnt/root || fatal "mount -t virtiofs bench failed" ;;
  strata|strata-layers|strata-erofs|strata-upper|strata-union)
    strata guest mount --tag strata --target /mnt/root || fatal "strata guest mount failed" ;;
  erofs)
    lower=""; i=0
    for d in a b c d e f g h i j k l m n o p; do
      [ $i -lt "$LAYERS" ] || break
      wait_dev /dev/vd$d
      mkdir -p /l/$i
      mount -t erofs -o ro /dev/vd$d /l/$i || fatal "mount -t erofs /dev/vd$d failed"
      lower="$lower${lower:+:}/l/$i"; i=$((i + 1)); scratch=/dev/vd$(echo "$d" | tr a-o b-p)
    done
    wait_dev "$scratch"
    mkdir -p /scratch
    mount -t ext4 "$scratch" /scratch || fatal "mount -t ext4 $scratch failed"
    mkdir -p /scratch/upper /scratch/work
    mount -t overlay overlay -o "lowerdir=$lower,upperdir=/scratch/upper,workdir=/scratch/work,index=off,redirect_dir=off,metacopy=off" /mnt/root \
      || fatal "mount -t overlay over erofs failed" ;;
  *) fatal "unknown bench.setup=$SETUP" ;;
esac
echo "@phase $SETUP mounted; $(grep -c . /proc/mounts) mounts"
ROOT=/mnt/root
# (e): the served tree's own upper dir, a plain virtio-fs directory (strata guest mount stages
# the tag at /run/strata/<tag>).
[ "$SETUP" = strata-upper ] && ROOT=/run/strata/strata/upper
rc=0
for w in $WORKLOADS; do
  echo "@phase $SETUP: $w"
  if out=$(strata bench guest-io "$w" "$ROOT" --small "$SMALL" --seq-mib "$SEQ" 2>&1); then
    echo "$out"
  else
    echo "@fatal $w: $out"; rc=1; break
  fi
done
finish $rc
