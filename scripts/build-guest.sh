#!/usr/bin/env bash
# Builds skymesh's tiny test guest from Debian packages only: the installed cloud kernel
# (linux-image-*-cloud-amd64) and an initramfs with busybox-static, the virtio modules and an
# init that brings up eth0, runs a TCP echo server and a memory writer that checks itself.
#
# Output: a directory with vmlinuz, initrd.img and manifest.json, printed on stdout (last line).
# Cached in ${SKYMESH_CACHE:-~/.cache/skymesh}/guest/<key>/, key = sha256 of this script and the
# kernel and busybox package versions; a cached guest is never rebuilt (other keys are removed
# after a week).
#
# Guest kernel command line (all optional):
#   skymesh.ip=10.0.2.15/24   static IPv4 of eth0 (default: 10.<mac[3]>.<mac[4]>.<mac[5]>/8)
#   skymesh.gw=10.0.2.2       default route
#   skymesh.echo=7            TCP echo server port
#   skymesh.memmib=16         memory the writer keeps (hot set, MiB)
#   skymesh.rate=1024         KiB/s the writer rewrites (0 = idle, checks only)
#   skymesh.connect=IP:PORT   a TCP client: one connection to an echo server, a numbered line
#                             every 100 ms, each echo checked (reconnects after 1 s if it breaks)
#   skymesh.metadata=1        read the metadata service at 169.254.169.254 (0 = do not)
# Serial console lines (ttyS0), one per second from the writer:
#   SKYMESH MEM OK t=<guest uptime> gen=<n> wrote=<KiB> checked=<chunks>
#   SKYMESH MEM FAIL chunk=<i> ...      (a chunk's content no longer matches its checksum)
# The TCP client (skymesh.connect) prints SKYMESH TCP CONNECT <ip:port> per connection, then
#   SKYMESH TCP OK n=<lines echoed> t=<uptime>   every 10 echoed lines
#   SKYMESH TCP FAIL got=<line> want=<line>       (an echo out of order or corrupted)
#   SKYMESH TCP CLOSED n=<lines echoed>           (the connection ended)
# The metadata reader (an on-link route to 169.254.169.254 on eth0: the agent's switch answers ARP
# for it) polls every 2 s for up to 2 min, until the VM's virtual cluster context is there:
#   SKYMESH META NAME <name>                 (at once: every VM on the overlay has a name)
#   SKYMESH META CLUSTER <cluster> role=<role>
#   SKYMESH META PEER <name> <ip> <role>     (one line per peer)
#   SKYMESH META DONE peers=<n>              (or SKYMESH META NONE if no context came)
# plus SKYMESH BOOT, SKYMESH NET <ip>, SKYMESH ECHO <port>, SKYMESH DISK <dev>|none, and
# SKYMESH DISK MARK|FOUND <marker> (a marker kept at 1 MiB of /dev/vda). The writer also puts
# "SKYMESH-GEN <gen>" at 2 MiB of /dev/vda every second.
set -euo pipefail

die() { echo "build-guest: $*" >&2; exit 1; }

kernel=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n1 || true)
[ -n "$kernel" ] || die "no /boot/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64)"
kver=${kernel#/boot/vmlinuz-}
moddir=/lib/modules/$kver
[ -d "$moddir" ] || die "no $moddir for kernel $kver"
busybox=/bin/busybox
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' && [ -x "$busybox" ] \
  || die "no busybox-static (apt-get install busybox-static)"
command -v cpio >/dev/null || die "no cpio (apt-get install cpio)"

kpkgver=$(dpkg-query -W -f='${Version}' "linux-image-$kver" 2>/dev/null || echo unknown)
bbver=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || echo unknown)
key=$( (cat "$0"; echo "$kver $kpkgver $bbver") | sha256sum | cut -c1-16)
cache=${SKYMESH_CACHE:-$HOME/.cache/skymesh}/guest
out=$cache/$key
if [ -f "$out/manifest.json" ]; then touch "$out"; echo "$out"; exit 0; fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,mem,lib/modules}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

# The virtio modules (this kernel builds them as modules), in load order (modules.dep lists
# each module's dependencies, which come first).
mods="virtio_net virtio_blk virtio_pci"
order=()
add_mod() {
  local name=$1 line path dep
  line=$(grep -E "/$name\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -n1) || die "module $name not in $moddir"
  path=${line%%:*}
  for dep in ${line#*:}; do add_mod "$(basename "$dep" | sed -E 's/\.ko(\.[a-z]+)?$//')"; done
  case " ${order[*]-} " in *" $path "*) ;; *) order+=("$path") ;; esac
}
for m in $mods; do add_mod "$m"; done
: >"$root/lib/modules/load-order"
for path in "${order[@]}"; do
  f=$(basename "$path")
  case "$f" in
    *.ko) cp "$moddir/$path" "$root/lib/modules/$f" ;;
    *.ko.xz) xz -dc "$moddir/$path" >"$root/lib/modules/${f%.xz}"; f=${f%.xz} ;;
    *.ko.zst) zstd -qdc "$moddir/$path" >"$root/lib/modules/${f%.zst}"; f=${f%.zst} ;;
    *) die "unknown module format $f" ;;
  esac
  echo "$f" >>"$root/lib/modules/load-order"
done

cat >"$root/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/ttyS0 2>&1
echo "SKYMESH BOOT $(uname -r) t=$(cut -d' ' -f1 /proc/uptime)"
for m in $(cat /lib/modules/load-order); do insmod /lib/modules/$m 2>/dev/null; done

arg() { for w in $(cat /proc/cmdline); do case "$w" in "skymesh.$1="*) echo "${w#*=}"; return;; esac; done; echo "$2"; }
ip=$(arg ip "")
if [ -z "$ip" ] && [ -e /sys/class/net/eth0/address ]; then
  mac=$(cat /sys/class/net/eth0/address)
  ip=$(echo "$mac" | awk -F: '{ printf "10.%d.%d.%d/8", "0x"$4, "0x"$5, "0x"$6 }')
fi
if [ -e /sys/class/net/eth0 ]; then
  ip link set lo up
  ip addr add "$ip" dev eth0
  ip link set eth0 up
  gw=$(arg gw "")
  [ -n "$gw" ] && ip route add default via "$gw"
  ip route add 169.254.169.254/32 dev eth0
  echo "SKYMESH NET $ip"
else
  echo "SKYMESH NET none"
fi
if [ -b /dev/vda ]; then
  echo "SKYMESH DISK vda $(cat /sys/block/vda/size)"
  # A marker at 1 MiB, written once per disk: a guest that finds it again kept its disk.
  mark=$(dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null | tr -d '\000' | head -c 64)
  case "$mark" in
    SKYMESH-DISK-*) echo "SKYMESH DISK FOUND $mark" ;;
    *) mark="SKYMESH-DISK-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
       printf '%s' "$mark" | dd of=/dev/vda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null
       echo "SKYMESH DISK MARK $mark" ;;
  esac
else
  echo "SKYMESH DISK none"
fi

port=$(arg echo 7)
(while true; do nc -ll -p "$port" -e /bin/cat; sleep 1; done) &
echo "SKYMESH ECHO $port"

if [ -e /sys/class/net/eth0 ] && [ "$(arg metadata 1)" != 0 ]; then
  (md=http://169.254.169.254/latest/meta-data; named=; i=0; state=NONE
   get() { timeout 5 wget -q -O - "$md/$1" 2>/dev/null; }
   while [ $i -lt 60 ]; do
     if [ -z "$named" ] && n=$(get name); then named=1; echo "SKYMESH META NAME $n"; fi
     if c=$(get cluster); then
       echo "SKYMESH META CLUSTER $c role=$(get role)"
       get peers >/tmp/peers
       while read -r p; do [ -n "$p" ] && echo "SKYMESH META PEER $p"; done </tmp/peers
       state="DONE peers=$(grep -c . /tmp/peers)"; break
     fi
     i=$((i + 1)); sleep 2
   done
   echo "SKYMESH META $state") &
fi

# The TCP client: one long-lived connection that carries a numbered line every 100 ms and checks
# that each comes back in order (a connection that survives a migration keeps counting up).
connect=$(arg connect "")
if [ -n "$connect" ]; then
  (cip=${connect%:*}; cport=${connect##*:}
   while true; do
     echo "SKYMESH TCP CONNECT $connect"
     (i=0; while true; do echo "SEQ $i"; i=$((i + 1)); usleep 100000; done) | nc "$cip" "$cport" | (
       n=0
       while read -r l; do
         [ "$l" = "SEQ $n" ] || echo "SKYMESH TCP FAIL got=$l want=SEQ $n"
         n=$((n + 1))
         [ $((n % 10)) -eq 0 ] && echo "SKYMESH TCP OK n=$n t=$(cut -d' ' -f1 /proc/uptime)"
       done
       echo "SKYMESH TCP CLOSED n=$n")
     sleep 1
   done) &
fi

# The memory writer: keeps memmib MiB in 256 KiB chunks on a tmpfs (guest RAM), rewrites
# chunks with fresh random bytes at `rate` KiB/s and records each chunk's md5; every second it
# re-checks a few of the chunks written so far round-robin against their recorded sums and prints OK or FAIL.
memmib=$(arg memmib 16)
rate=$(arg rate 1024)
mount -t tmpfs -o size=$((memmib + 4))m tmpfs /mem
chunks=$((memmib * 4))
echo "SKYMESH MEM READY chunks=$chunks t=$(cut -d' ' -f1 /proc/uptime)"
gen=0; w=0; wrote=0; checked=0; c=0; fails=0; filled=0
while true; do
  start=$(cut -d' ' -f1 /proc/uptime)
  # writes this second: rate KiB in 256 KiB chunks (at least one per second if rate > 0)
  n=$(( (rate + 255) / 256 ))
  k=0
  while [ $k -lt $n ]; do
    dd if=/dev/urandom of=/mem/c$w bs=64k count=4 2>/dev/null
    md5sum /mem/c$w >/mem/s$w
    w=$(( (w + 1) % chunks )); wrote=$((wrote + 256)); k=$((k + 1))
    [ $filled -lt $chunks ] && filled=$((filled + 1))
  done
  k=0
  while [ $k -lt 4 ] && [ $filled -gt 0 ]; do
    if ! md5sum -c -s /mem/s$c; then
      fails=$((fails + 1)); echo "SKYMESH MEM FAIL chunk=$c gen=$gen fails=$fails"
    fi
    c=$(( (c + 1) % filled )); checked=$((checked + 1)); k=$((k + 1))
  done
  gen=$((gen + 1))
  # the writer's generation on the disk too (at 2 MiB, flushed): the disk changes while it migrates
  [ -b /dev/vda ] && printf 'SKYMESH-GEN %08d' "$gen" | dd of=/dev/vda bs=512 seek=4096 conv=notrunc,fsync 2>/dev/null
  [ $fails -eq 0 ] && echo "SKYMESH MEM OK t=$start gen=$gen wrote=$wrote checked=$checked"
  # sleep out the rest of the second (guest time)
  now=$(cut -d' ' -f1 /proc/uptime)
  left=$(awk "BEGIN { l = 1 - ($now - $start); print (l > 0) ? int(l * 1000000) : 0 }")
  [ "$left" -gt 0 ] && usleep "$left"
done
INIT
chmod +x "$root/init"

(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -9) >"$work/initrd.img"
cp "$kernel" "$work/vmlinuz"
cat >"$work/manifest.json" <<EOF
{"key":"$key","kernel":"$kver","kernelPackage":"linux-image-$kver $kpkgver","busybox":"busybox-static $bbver","modules":"$(tr '\n' ' ' <"$root/lib/modules/load-order" | sed 's/ $//')"}
EOF
rm -rf "$root"
mkdir -p "$out"
mv "$work"/vmlinuz "$work"/initrd.img "$out"/
mv "$work/manifest.json" "$out/manifest.json" # last: its presence marks a complete build
# Guests built by other versions of this script or other packages: removed once unused for a week
# (not at once: another checkout on this machine may be using its own version right now).
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name '.build-*' -mtime +7 -exec rm -rf {} +
echo "$out"
