#!/bin/sh
# Usage (as root, inside `unshare --mount --net`): bench/libvirtd-throwaway.sh SOCKET_DIR
# Nothing it writes outlives the mount namespace: every libvirt directory is a fresh tmpfs.
# libvirtd for the benchmark, in throwaway mounts: /etc/libvirt, /var/lib/libvirt, /run/libvirt, logs and cache.
set -e
# The qemu driver resolves its compiled-in user before reading qemu.conf: give it one, here only.
cp /etc/passwd /etc/group "$1/.."
echo 'libvirt-qemu:x:64055:64055::/nonexistent:/usr/sbin/nologin' >> "$1/../passwd"
echo 'libvirt-qemu:x:64055:' >> "$1/../group"
grep -q '^kvm:' "$1/../group" || echo 'kvm:x:64056:' >> "$1/../group"
mount --bind "$1/../passwd" /etc/passwd
mount --bind "$1/../group" /etc/group
for d in /etc/libvirt /var/lib/libvirt /run/libvirt /var/log/libvirt /var/cache/libvirt; do
    mkdir -p "$d"
    mount -t tmpfs tmpfs "$d"
done
mkdir -p /etc/libvirt/qemu /etc/libvirt/storage
cat > /etc/libvirt/qemu.conf <<'CONF'
security_driver = "none"
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
cgroup_controllers = [ ]
namespaces = [ ]
swtpm_user = "root"
swtpm_group = "root"
stdio_handler = "file"
CONF
cat > /etc/libvirt/libvirtd.conf <<CONF
unix_sock_dir = "$1"
auth_unix_rw = "none"
auth_unix_ro = "none"
CONF
printf 'uri_default = "qemu:///system"\n' > /etc/libvirt/libvirt.conf
exec libvirtd --config /etc/libvirt/libvirtd.conf
