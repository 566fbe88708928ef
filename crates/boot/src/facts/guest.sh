#!/bin/sh
# kiln boot check: report first-boot facts on the serial console as KILN-FACT lines.
# Started by cloud-init's runcmd (detached), so it can wait for cloud-init to finish.
PATH=${PATH:-/usr/sbin:/usr/bin:/sbin:/bin}
tty=@TTY@
out=$(mktemp 2>/dev/null) || out=/run/kiln-facts.txt
# A newline first ends whatever is on the console line (a login prompt).
printf '\n' > "$out"
fact() { printf 'KILN-FACT %s=%s\n' "$1" "$2" >> "$out"; }
# lim SECONDS COMMAND...: run COMMAND for at most SECONDS where timeout(1) exists.
lim() { if command -v timeout >/dev/null 2>&1; then timeout "$@"; else shift; "$@"; fi; }

# cloud-init: wait for it, then read its own verdict.
ci=$(lim 600 cloud-init status --wait 2>/dev/null | sed -n 's/^status: *//p' | tail -n 1)
fact cloud-init-status "${ci:-unknown}"
python3 - >> "$out" 2>/dev/null <<'PY'
import json
with open('/run/cloud-init/result.json') as f:
    v1 = json.load(f)['v1']
print('KILN-FACT datasource=%s' % (v1.get('datasource') or ''))
print('KILN-FACT cloud-init-errors=%d' % len(v1.get('errors') or []))
# Newer cloud-init also lists warnings by level; older ones have no such key.
rec = v1.get('recoverable_errors')
if isinstance(rec, dict):
    print('KILN-FACT cloud-init-warnings=%d' % sum(len(v) for v in rec.values()))
PY

# systemd: wait for the boot to settle, then list failed units.
if command -v systemctl >/dev/null 2>&1; then
    lim 180 systemctl is-system-running --wait >/dev/null 2>&1
    fact system-state "$(systemctl is-system-running 2>/dev/null)"
    fact failed-units "$(systemctl list-units --state=failed --no-legend --plain 2>/dev/null |
        awk '{ printf "%s%s", sep, $1; sep = "," }')"
fi

# The root filesystem, its block device and the disk under it.
src=$(findmnt -no SOURCE / 2>/dev/null | sed 's/\[.*//')
fact root-source "$src"
name=$(basename "$(readlink -f "$src")")
sys=/sys/class/block/$name
disk=
if [ -r "$sys/size" ]; then
    fact root-dev-bytes $(($(cat "$sys/size") * 512))
    if [ -r "$sys/partition" ]; then
        disk=$(basename "$(readlink -f "$sys/..")")
        fact root-dev-end-bytes $((($(cat "$sys/start") + $(cat "$sys/size")) * 512))
    else
        disk=$(lsblk -rnso NAME,TYPE "/dev/$name" 2>/dev/null | awk '$2 == "disk" { print $1; exit }')
    fi
fi
if [ -n "$disk" ] && [ -r "/sys/class/block/$disk/size" ]; then
    fact disk-name "$disk"
    fact disk-bytes $(($(cat "/sys/class/block/$disk/size") * 512))
fi
fstype=$(findmnt -no FSTYPE / 2>/dev/null)
fact root-fs-type "$fstype"
fsbytes=
case "$fstype" in
ext2 | ext3 | ext4)
    # shellcheck disable=SC2046 # two numbers, split on purpose
    set -- $(dumpe2fs -h "$src" 2>/dev/null |
        awk -F: '/^Block count:/ { c = $2 } /^Block size:/ { s = $2 } END { print c + 0, s + 0 }')
    if [ "${1:-0}" -gt 0 ] && [ "${2:-0}" -gt 0 ]; then
        fsbytes=$(($1 * $2))
        fact root-fs-measure superblock
    fi
    ;;
esac
if [ -z "$fsbytes" ]; then
    # shellcheck disable=SC2046 # two numbers, split on purpose
    set -- $(stat -f -c '%b %S' / 2>/dev/null)
    if [ "${1:-0}" -gt 0 ]; then
        fsbytes=$(($1 * $2))
        fact root-fs-measure statfs
    fi
fi
fact root-fs-bytes "$fsbytes"

# Firmware, kernel command line, boot time.
if [ -d /sys/firmware/efi ]; then fact firmware uefi; else fact firmware bios; fi
fact cmdline-consoles "$(tr ' ' '\n' < /proc/cmdline | grep '^console=' | tr '\n' ' ')"
fact boot-time "$(awk '/^btime/ { print $2 }' /proc/stat)"

# The machine id and systemd's first-boot verdict (/run/systemd/first-boot exists then).
fact machine-id "$(cat /etc/machine-id 2>/dev/null)"
fact machine-id-mtime "$(stat -c %Y /etc/machine-id 2>/dev/null)"
if [ -e /run/systemd/first-boot ]; then fact systemd-first-boot yes; else fact systemd-first-boot no; fi

# SSH host keys, when an SSH server is installed.
if [ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1; then
    n=0
    oldest=
    for k in /etc/ssh/ssh_host_*_key; do
        [ -e "$k" ] || continue
        n=$((n + 1))
        m=$(stat -c %Y "$k")
        if [ -z "$oldest" ] || [ "$m" -lt "$oldest" ]; then oldest=$m; fi
    done
    fact ssh-host-keys "$n"
    fact ssh-host-keys-oldest-mtime "$oldest"
else
    fact ssh-host-keys not-installed
fi

n=$(grep -c '^KILN-FACT ' "$out")
printf 'KILN-FACTS-END count=%s\n' "$n" >> "$out"
# One write to the console, with kernel messages held back meanwhile, so nothing cuts in.
level=
if [ -c "$tty" ]; then
    level=$(awk '{ print $1; exit }' /proc/sys/kernel/printk 2>/dev/null)
    dmesg -n 1 2>/dev/null
fi
cat "$out" > "$tty"
if [ -n "$level" ]; then dmesg -n "$level" 2>/dev/null; fi
rm -f "$out"
