#!/usr/bin/env bash
# Build vmid's test guest: a small BIOS-bootable qcow2 (MBR + syslinux on one FAT partition)
# holding a Debian kernel and a busybox-static initramfs whose /init is tests/guest/init.
#
#   tests/guest/build.sh OUTPUT.qcow2
#
# No mounts, no loop devices: sfdisk, mkfs.vfat --offset, mcopy -i IMG@@OFFSET,
# syslinux --install --offset. Make-like: when OUTPUT is newer than this script and its inputs
# it exits at once. Downloaded .debs and the kernel files taken from them are cached in
# $VMID_GUEST_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/vmid-test-guest).
#
# Environment:
#   VMID_GUEST_CACHE   cache directory (see above)
#   VMID_GUEST_KERNEL  kernel package to use, e.g. linux-image-6.1.0-56-amd64; default: the one
#                      already cached, else what linux-image-amd64 depends on now
#   VMID_GUEST_QUIET   non-empty: no progress lines on stderr
#
# qemu-ga, from Debian's qemu-guest-agent package (a cached .deb), goes in with the shared
# libraries it needs, taken from this host (Debian 12, as the package: ldd resolves them).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"   # sfdisk, mkfs.vfat for users whose PATH lacks them

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT="$HERE/$(basename "${BASH_SOURCE[0]}")"
INPUTS=("$SCRIPT" "$HERE/init" "$HERE/udhcpc.script" "$HERE/shutdown")

# Modules the guest loads, in this order (each after its dependencies, which are added).
# Storage drivers come after sd_mod/sr_mod so disks are bound while the module loads.
MODULES=(
    evdev button                           # ACPI power button as /dev/input/event*
    virtio_pci virtio_console              # virtio transport, virtio-serial ports
    scsi_mod sd_mod sr_mod cdrom isofs     # SCSI disks and cdroms, ISO 9660 (cidata)
    virtio_blk virtio_scsi ahci            # the disk buses vmid uses: virtio, scsi, sata
    virtio_net e1000 e1000e                # NICs
    pvpanic_mmio pvpanic_pci               # panicDevices (isa pvpanic, pci pvpanic)
    crc32c_generic ext4                    # a data disk's file system (fsfreeze tests)
)
CMDLINE="console=ttyS0,115200 quiet"
IMAGE_MIB=32        # raw disk size; the qcow2 only stores what is written
PART_START=2048     # first sector of the FAT partition (1 MiB)

die() { echo "build.sh: $*" >&2; exit 1; }
log() { [ -n "${VMID_GUEST_QUIET:-}" ] || echo "build.sh: $*" >&2; }

[ $# -eq 1 ] || die "usage: $0 OUTPUT.qcow2"
OUTPUT=$1

# --- make-like check: nothing to do when OUTPUT is newer than every input -------------------
up_to_date() {
    [ -s "$OUTPUT" ] || return 1
    local input
    for input in "${INPUTS[@]}"; do
        [ "$OUTPUT" -nt "$input" ] || return 1
    done
}
if up_to_date; then
    exit 0
fi

START=$(date +%s%N)
CACHE=${VMID_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmid-test-guest}
mkdir -p "$CACHE/debs"
exec 9>"$CACHE/lock"
flock 9   # one build at a time fills the cache

# --- host tools: installed with apt-get only when missing -----------------------------------
apt_install() {
    [ $# -gt 0 ] || return 0
    log "installing Debian packages: $*"
    [ "$(id -u)" = 0 ] || die "missing tools; run as root, or: apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "$@" >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null
        apt-get install -y -qq "$@" >/dev/null
    }
}
need=()
command -v sfdisk >/dev/null || need+=(fdisk)
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
command -v syslinux >/dev/null || need+=(syslinux)
dpkg -s syslinux-common >/dev/null 2>&1 || need+=(syslinux-common)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v qemu-img >/dev/null || need+=(qemu-utils)
apt_install "${need[@]}"

BUSYBOX=/bin/busybox   # from busybox-static (it conflicts with the dynamic busybox package)
MBR_BIN=
for candidate in /usr/lib/syslinux/mbr/mbr.bin /usr/lib/SYSLINUX/mbr.bin; do
    [ -f "$candidate" ] && { MBR_BIN=$candidate; break; }
done
[ -n "$MBR_BIN" ] || die "syslinux's mbr.bin not found"

# --- the kernel package: cached .deb, else apt-get download ---------------------------------
kernel_package() {
    if [ -n "${VMID_GUEST_KERNEL:-}" ]; then
        echo "$VMID_GUEST_KERNEL"
        return
    fi
    local cached
    cached=$(cd "$CACHE/debs" && ls linux-image-*-amd64_*.deb 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$cached" ]; then
        echo "${cached%%_*}"
        return
    fi
    local package
    package=$(apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)
    if [ -z "$package" ]; then
        [ "$(id -u)" = 0 ] || die "apt-cache knows no linux-image-amd64; run apt-get update"
        apt-get update -qq >/dev/null
        package=$(apt-cache depends linux-image-amd64 |
            sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)
    fi
    [ -n "$package" ] || die "cannot tell which kernel linux-image-amd64 depends on"
    echo "$package"
}
PACKAGE=$(kernel_package)
KVER=${PACKAGE#linux-image-}
DEB=$(cd "$CACHE/debs" && ls "${PACKAGE}"_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$DEB" ]; then
    log "downloading $PACKAGE"
    DOWNLOAD=$(mktemp -d "$CACHE/download.XXXXXX")
    (cd "$DOWNLOAD" && apt-get download -q "$PACKAGE" 2>&1 |
        grep -v '^W: Download is performed unsandboxed' >&2 || true)
    mv "$DOWNLOAD"/*.deb "$CACHE/debs/" 2>/dev/null || true
    rm -rf "$DOWNLOAD"
    DEB=$(cd "$CACHE/debs" && ls "${PACKAGE}"_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$DEB" ] || die "apt-get download $PACKAGE failed"
fi
DEB=$CACHE/debs/$DEB

# --- qemu-ga: Debian's qemu-guest-agent .deb, cached like the kernel's ----------------------
QGA_DEB=$(cd "$CACHE/debs" && ls qemu-guest-agent_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$QGA_DEB" ]; then
    log "downloading qemu-guest-agent"
    DOWNLOAD=$(mktemp -d "$CACHE/download.XXXXXX")
    (cd "$DOWNLOAD" && apt-get download -q qemu-guest-agent 2>&1 |
        grep -v '^W: Download is performed unsandboxed' >&2 || true)
    mv "$DOWNLOAD"/*.deb "$CACHE/debs/" 2>/dev/null || true
    rm -rf "$DOWNLOAD"
    QGA_DEB=$(cd "$CACHE/debs" && ls qemu-guest-agent_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$QGA_DEB" ] || die "apt-get download qemu-guest-agent failed"
fi
QGA_DEB=$CACHE/debs/$QGA_DEB

# --- the kernel files: vmlinuz and the modules' closure, cached per package and module list -
KCACHE=$CACHE/kernel/$KVER
WANTED="$(basename "$DEB") ${MODULES[*]}"
if [ "$(cat "$KCACHE/wanted" 2>/dev/null || true)" != "$WANTED" ]; then
    log "extracting $(basename "$DEB")"
    TMPX=$(mktemp -d "$CACHE/extract.XXXXXX")
    trap 'rm -rf "$TMPX"' EXIT
    dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$TMPX" --wildcards \
        './boot/vmlinuz-*' './lib/modules/*/modules.builtin' './lib/modules/*.ko*'
    MODDIR=$TMPX/lib/modules/$KVER
    [ -d "$MODDIR" ] && [ -f "$TMPX/boot/vmlinuz-$KVER" ] || die "$DEB holds no kernel $KVER"
    # name -> path of every module in the package; the names of the built-in ones
    declare -A PATH_OF=()
    while IFS= read -r path; do
        name=${path##*/}; name=${name%%.ko*}
        PATH_OF[${name//-/_}]=$path
    done < <(cd "$MODDIR" && find kernel -name '*.ko*')
    declare -A BUILTIN=()
    while IFS= read -r path; do
        name=${path##*/}; name=${name%%.ko*}
        BUILTIN[${name//-/_}]=1
    done < "$MODDIR/modules.builtin"
    # Depth-first: every module after its dependencies (the depends= field of its .modinfo,
    # which is what depmod turns into modules.dep; the package ships no modules.dep).
    declare -A SEEN=()
    ORDER=()
    visit() {
        local name=${1//-/_} dep depends
        [ -z "${SEEN[$name]:-}" ] || return 0
        SEEN[$name]=1
        if [ -n "${BUILTIN[$name]:-}" ]; then
            return 0
        fi
        [ -n "${PATH_OF[$name]:-}" ] || die "module $name is not in $PACKAGE"
        depends=$(uncompressed "$MODDIR/${PATH_OF[$name]}" | tr '\0' '\n' |
            sed -n 's/^depends=//p' | head -n 1)
        for dep in ${depends//,/ }; do
            visit "$dep"
        done
        ORDER+=("$name")
    }
    uncompressed() {
        case $1 in
            *.xz) xz -dc "$1" ;;
            *.zst) zstd -dcq "$1" ;;
            *.gz) gzip -dc "$1" ;;
            *) cat "$1" ;;
        esac
    }
    for module in "${MODULES[@]}"; do
        visit "$module"
    done
    NEW=$TMPX/new
    mkdir -p "$NEW/modules"
    cp "$TMPX/boot/vmlinuz-$KVER" "$NEW/vmlinuz"
    : > "$NEW/modules.order"
    for name in "${ORDER[@]}"; do
        uncompressed "$MODDIR/${PATH_OF[$name]}" > "$NEW/modules/$name.ko"
        echo "$name" >> "$NEW/modules.order"
    done
    echo "$WANTED" > "$NEW/wanted"
    mkdir -p "$CACHE/kernel"
    rm -rf "$KCACHE"
    mv "$NEW" "$KCACHE"
    rm -rf "$TMPX"
    trap - EXIT
fi

# --- the initramfs: busybox, /init, the modules; cpio newc, gzip ----------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vmid-guest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,dev,proc,sys,run,tmp,mnt,etc,lib/modules,usr/bin,usr/sbin}
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$ROOT/bin/$applet"
done
install -m 0755 "$HERE/init" "$ROOT/init"
install -m 0755 "$HERE/udhcpc.script" "$ROOT/etc/udhcpc.script"
cp "$KCACHE"/modules/*.ko "$ROOT/lib/modules/"
cp "$KCACHE/modules.order" "$ROOT/lib/modules/order"
echo "$PACKAGE $(basename "$DEB")" > "$ROOT/etc/vmid-guest-kernel"
echo "root:x:0:0:root:/:/bin/sh" > "$ROOT/etc/passwd"
install -m 0755 "$HERE/shutdown" "$ROOT/sbin/shutdown"   # what qemu-ga's guest-shutdown runs
cat > "$ROOT/etc/os-release" <<'OSRELEASE'
NAME="vmid test guest"
ID=vmid-guest
VERSION="1 (busybox)"
VERSION_ID=1
PRETTY_NAME="vmid test guest 1"
OSRELEASE
# qemu-ga and every shared library it loads (this host's: Debian 12, as the package).
dpkg-deb --fsys-tarfile "$QGA_DEB" | tar -x -C "$WORK" ./usr/sbin/qemu-ga
install -m 0755 "$WORK/usr/sbin/qemu-ga" "$ROOT/usr/sbin/qemu-ga"
mkdir -p "$ROOT/lib64" "$ROOT/lib/x86_64-linux-gnu"
for library in $(ldd "$ROOT/usr/sbin/qemu-ga" | grep -o '/[^ ]*'); do
    cp -L "$library" "$ROOT$library"
done
[ -e "$ROOT/lib64/ld-linux-x86-64.so.2" ] || die "qemu-ga's dynamic loader was not found"

# A newc entry for a character device: /dev/console must exist before /init runs (the kernel
# opens it for init's stdio) and making device nodes needs root, so it is written by hand as a
# second cpio archive; the kernel unpacks concatenated archives in order.
newc_entry() { # name mode rdevmajor rdevminor
    local name=$1 header pad
    header=$(printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        0 "$2" 0 0 1 0 0 0 0 "$3" "$4" $((${#name} + 1)) 0)
    printf '%s%s\0' "$header" "$name"
    pad=$(((4 - (110 + ${#name} + 1) % 4) % 4))
    head -c "$pad" /dev/zero
}
{
    (cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet)
    newc_entry dev/console $((8#020600)) 5 1
    newc_entry TRAILER!!! 0 0 0
} | gzip -6 -n > "$WORK/initrd.gz"

# --- the disk: MBR (syslinux mbr.bin) + one bootable FAT16 partition -----------------------
RAW=$WORK/disk.raw
truncate -s "${IMAGE_MIB}M" "$RAW"
echo "start=$PART_START, type=e, bootable" | sfdisk -q --label dos "$RAW" >/dev/null
PART_SECTORS=$((IMAGE_MIB * 2048 - PART_START))
mkfs.vfat -F 16 -n VMIDGUEST --invariant --offset "$PART_START" "$RAW" $((PART_SECTORS / 2)) >/dev/null
cat > "$WORK/syslinux.cfg" <<EOF
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
    LINUX /vmlinuz
    INITRD /initrd.gz
    APPEND $CMDLINE
EOF
export MTOOLS_SKIP_CHECK=1
OFFSET=$((PART_START * 512))
mcopy -i "$RAW@@$OFFSET" "$KCACHE/vmlinuz" "$WORK/initrd.gz" "$WORK/syslinux.cfg" ::/
syslinux --install --offset "$OFFSET" "$RAW"
dd if="$MBR_BIN" of="$RAW" bs=440 count=1 conv=notrunc status=none

mkdir -p "$(dirname "$OUTPUT")"
qemu-img convert -q -f raw -O qcow2 "$RAW" "$WORK/out.qcow2"
mv -f "$WORK/out.qcow2" "$OUTPUT"
log "built $OUTPUT ($PACKAGE, $(du -k "$OUTPUT" | cut -f1) KiB) in $((($(date +%s%N) - START) / 1000000)) ms"
