# shellcheck shell=bash
# Shared by the root.d "baseinstall" hooks of Debian-family operating-system elements
# (debian-minimal, ubuntu-minimal). Not a hook itself: the dot in the name keeps dib-run-parts
# from running it. Source it, then call
#
#   kiln_apt_baseinstall PACKAGE...
#
# which, in $TARGET_ROOT:
#   1. writes one /etc/apt/sources.list.d/<name>.list per "name:line" entry of
#      DIB_APT_SOURCES_CONF (entries with the same name share a file) and empties
#      /etc/apt/sources.list;
#   2. mounts /proc, a read-only /sys, /dev and /dev/pts (unmounted again on every exit path)
#      and lends the build host's resolv.conf if the image has none; in a locked build
#      (KILN_LOCK_REPO set by kiln build --lock) it also binds the lock's local repository
#      read-only at /tmp/kiln-lock-repo, which the apt configuration 08-debootstrap put in
#      /etc/apt/apt.conf.d/00kiln-lock makes apt's only source;
#   3. runs apt-get update (through the dpkg element's kiln-apt-update, which explains an
#      expired Release file), apt-get dist-upgrade (unless DIB_AVOID_PACKAGES_UPDATE=1) and
#      apt-get install PACKAGE... in the image.

_kiln_mounts=()
_kiln_lent_resolv=0

_kiln_undo() {
    local i
    for ((i = ${#_kiln_mounts[@]} - 1; i >= 0; i--)); do
        umount "${_kiln_mounts[$i]}" 2>/dev/null || umount -l "${_kiln_mounts[$i]}" || true
    done
    _kiln_mounts=()
    if [ "$_kiln_lent_resolv" -eq 1 ]; then
        if [ -f "$TARGET_ROOT/etc/resolv.conf" ] && [ ! -L "$TARGET_ROOT/etc/resolv.conf" ]; then
            rm -f "$TARGET_ROOT/etc/resolv.conf"
        fi
        _kiln_lent_resolv=0
    fi
}

# _kiln_mount DIR ARGS...: mount ARGS... on $TARGET_ROOT/DIR unless something is mounted there.
_kiln_mount() {
    local dir=$TARGET_ROOT/$1
    shift
    mkdir -p "$dir"
    if mountpoint -q "$dir"; then
        return 0
    fi
    mount "$@" "$dir" || return 1
    _kiln_mounts+=("$dir")
}

kiln_in_target() {
    chroot "$TARGET_ROOT" /usr/bin/env -u TMPDIR -u VIRTUAL_ENV -u PYTHONPATH -u PYTHONHOME \
        HOME=/root LC_ALL=C \
        DEBIAN_FRONTEND=noninteractive \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

_kiln_write_sources() {
    local dir=$TARGET_ROOT/etc/apt/sources.list.d line name entry keyring signed=0
    local -A written=()
    install -d -m 0755 "$dir"
    : > "$TARGET_ROOT/etc/apt/sources.list"

    # Sources without signed-by rely on keys in trusted.gpg(.d); if the image has none, point
    # them at the distribution's keyring.
    keyring=/usr/share/keyrings/${DISTRO_NAME}-archive-keyring.gpg
    if [ -z "$(find "$TARGET_ROOT/etc/apt/trusted.gpg.d" -maxdepth 1 \( -name '*.gpg' -o -name '*.asc' \) -print -quit 2>/dev/null)" ] \
        && [ ! -s "$TARGET_ROOT/etc/apt/trusted.gpg" ] && [ -f "$TARGET_ROOT$keyring" ]; then
        signed=1
    fi

    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in
            ''|'#'*) continue ;;
            *:*) ;;
            *) die "DIB_APT_SOURCES_CONF: '$line' is not of the form name:deb-line" ;;
        esac
        name=${line%%:*}
        entry=${line#*:}
        case "$name" in
            *[!A-Za-z0-9_.-]*|'') die "DIB_APT_SOURCES_CONF: bad source name '$name'" ;;
        esac
        if [ "$signed" -eq 1 ]; then
            case "$entry" in
                "deb "*|"deb-src "*)
                    case "$entry" in
                        *" ["*) ;;
                        *) entry="${entry%% *} [signed-by=$keyring] ${entry#* }" ;;
                    esac
                    ;;
            esac
        fi
        if [ -z "${written[$name]:-}" ]; then
            printf '%s\n' "$entry" > "$dir/$name.list"
            written[$name]=1
        else
            printf '%s\n' "$entry" >> "$dir/$name.list"
        fi
    done <<< "${DIB_APT_SOURCES_CONF:-}"
    [ "${#written[@]}" -gt 0 ] || die "DIB_APT_SOURCES_CONF is empty: no apt sources for the image"
}

kiln_apt_baseinstall() {
    : "${TARGET_ROOT:?TARGET_ROOT is not set}"
    [ -n "${DIB_DISTRIBUTION_MIRROR:-}" ] \
        || die "No ${DISTRO_NAME:-distribution} package mirror: set DIB_DISTRIBUTION_MIRROR to the mirror's URL (the build host's apt sources name none that fits)"
    [ -x "$TARGET_ROOT/usr/bin/apt-get" ] \
        || die "$TARGET_ROOT has no apt-get: the base system was not created (is debootstrap's root.d/08-debootstrap in the build?)"

    local apt_opts=(-o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef -y)

    _kiln_write_sources

    trap _kiln_undo EXIT
    _kiln_mount proc -t proc proc
    _kiln_mount sys -t sysfs -o ro sysfs
    _kiln_mount dev --bind /dev
    # Keep the devpts mount below from propagating to the build host's /dev/pts.
    mount --make-private "$TARGET_ROOT/dev" 2>/dev/null || true
    _kiln_mount dev/pts -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts \
        || echo "kiln: warning: could not mount devpts in the image; apt may warn about it" >&2
    if [ -n "${KILN_LOCK_REPO:-}" ]; then
        [ -f "$TARGET_ROOT/etc/apt/apt.conf.d/00kiln-lock" ] \
            || die "a locked build, but $TARGET_ROOT/etc/apt/apt.conf.d/00kiln-lock is missing (debootstrap's root.d/08-debootstrap writes it)"
        _kiln_mount tmp/kiln-lock-repo --bind -o ro "$KILN_LOCK_REPO"
    fi

    if [ ! -e "$TARGET_ROOT/etc/resolv.conf" ] && [ ! -L "$TARGET_ROOT/etc/resolv.conf" ]; then
        if [ -r /etc/resolv.conf ]; then
            cat /etc/resolv.conf > "$TARGET_ROOT/etc/resolv.conf"
            _kiln_lent_resolv=1
        else
            echo "kiln: warning: the build host has no /etc/resolv.conf; name lookups may fail" >&2
        fi
    fi

    # The dpkg element's kiln-apt-update explains a Release file past its Valid-Until.
    local update=${BASH_SOURCE[0]%/*}/../bin/kiln-apt-update
    if [ -f "$update" ]; then
        kiln_in_target DIB_APT_ALLOW_EXPIRED="${DIB_APT_ALLOW_EXPIRED:-0}" \
            bash -c "$(cat "$update")" kiln-apt-update
    else
        kiln_in_target apt-get update
    fi
    mkdir -p "$TARGET_ROOT/var/lib/apt/lists"
    touch "$TARGET_ROOT/var/lib/apt/lists/.kiln-updated"
    if [ "${DIB_AVOID_PACKAGES_UPDATE:-0}" != 1 ]; then
        kiln_in_target apt-get "${apt_opts[@]}" dist-upgrade
    fi
    if [ "$#" -gt 0 ]; then
        kiln_in_target apt-get "${apt_opts[@]}" install "$@"
    fi

    _kiln_undo
    trap - EXIT
}
