# Print one line per entry below $1: path|type|mode:uid:gid[|size|md5 or |link target].
# Run by the guest on its rootfs and by the host on the oracle overlay mount: the lines must
# match. Uses busybox applets explicitly so both sides run the same tools. Skips $2 (a dir name
# with too many files to fingerprint one by one under TCG).
cd "$1" || exit 1
busybox find . -path "./$2" -prune -o -print | busybox sort | while IFS= read -r p; do
  t=$(busybox stat -c %F "$p")
  line="$p|$t|$(busybox stat -c %a:%u:%g "$p")"
  case "$t" in
    regular*) line="$line|$(busybox stat -c %s "$p")|$(busybox md5sum < "$p" | busybox cut -d' ' -f1)" ;;
    symbolic*) line="$line|$(busybox readlink "$p")" ;;
  esac
  echo "M $line"
done
