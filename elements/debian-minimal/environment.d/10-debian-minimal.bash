# shellcheck shell=bash
# Debian as the image's operating system (sourced, not executed).
#
# The package mirror is DIB_DISTRIBUTION_MIRROR; when unset it is taken from the build host's own
# apt sources (a URI ending in /debian, or any non-security one on a Debian host). The security
# mirror is DIB_DEBIAN_SECURITY_MIRROR, else the host's security source, else the mirror with
# a trailing /debian turned into /debian-security. If no mirror is found the variable stays empty
# and the root.d hooks stop with an error asking for DIB_DISTRIBUTION_MIRROR.

export DISTRO_NAME=debian
export DIB_RELEASE=${DIB_RELEASE:-stable}
export DIB_INIT_SYSTEM=${DIB_INIT_SYSTEM:-systemd}
export EFI_BOOT_DIR=${EFI_BOOT_DIR:-EFI/debian}
export DIB_DEBIAN_COMPONENTS=${DIB_DEBIAN_COMPONENTS:-main}
# kiln addition: 0 leaves out the kernel and initramfs-tools (container root filesystems; the
# container element sets it). DIB_DEBIAN_INSTALL_KERNEL is its older, Debian-only spelling.
export DIB_INSTALL_KERNEL=${DIB_INSTALL_KERNEL:-${DIB_DEBIAN_INSTALL_KERNEL:-1}}

if [ -z "${DIB_DISTRIBUTION_MIRROR:-}" ] && declare -F _kiln_apt_pick >/dev/null; then
    DIB_DISTRIBUTION_MIRROR=$(_kiln_apt_pick main '/debian$') || true
    if [ -z "$DIB_DISTRIBUTION_MIRROR" ] && _kiln_host_os_id_is debian; then
        DIB_DISTRIBUTION_MIRROR=$(_kiln_apt_pick main '.') || true
    fi
fi
DIB_DISTRIBUTION_MIRROR=${DIB_DISTRIBUTION_MIRROR:-}
export DIB_DISTRIBUTION_MIRROR=${DIB_DISTRIBUTION_MIRROR%/}

if [ -z "${DIB_DEBIAN_SECURITY_MIRROR:-}" ]; then
    if declare -F _kiln_apt_pick >/dev/null; then
        DIB_DEBIAN_SECURITY_MIRROR=$(_kiln_apt_pick security '/debian-security$') || true
    fi
    if [ -z "${DIB_DEBIAN_SECURITY_MIRROR:-}" ]; then
        case "$DIB_DISTRIBUTION_MIRROR" in
            */debian) DIB_DEBIAN_SECURITY_MIRROR=${DIB_DISTRIBUTION_MIRROR}-security ;;
        esac
    fi
fi
DIB_DEBIAN_SECURITY_MIRROR=${DIB_DEBIAN_SECURITY_MIRROR:-}
export DIB_DEBIAN_SECURITY_MIRROR=${DIB_DEBIAN_SECURITY_MIRROR%/}

case "$DIB_RELEASE" in
    jessie|stretch|buster) _kiln_security_suite=$DIB_RELEASE/updates ;;
    *) _kiln_security_suite=$DIB_RELEASE-security ;;
esac
export DIB_DEBIAN_SECURITY_SUBPATH=${DIB_DEBIAN_SECURITY_SUBPATH:-$_kiln_security_suite}

# One "name:deb-line" entry per line; root.d writes /etc/apt/sources.list.d/<name>.list.
_kiln_components=${DIB_DEBIAN_COMPONENTS//,/ }
_kiln_sources="default:deb ${DIB_DISTRIBUTION_MIRROR} ${DIB_RELEASE} ${_kiln_components}"
case "$DIB_RELEASE" in
    unstable|sid|experimental|rc-buggy) ;;
    *)
        _kiln_sources="${_kiln_sources}
updates:deb ${DIB_DISTRIBUTION_MIRROR} ${DIB_RELEASE}-updates ${_kiln_components}"
        if [ -n "$DIB_DEBIAN_SECURITY_MIRROR" ]; then
            _kiln_sources="${_kiln_sources}
security:deb ${DIB_DEBIAN_SECURITY_MIRROR} ${DIB_DEBIAN_SECURITY_SUBPATH} ${_kiln_components}"
        fi
        ;;
esac
export DIB_APT_SOURCES_CONF=${DIB_APT_SOURCES_CONF:-$_kiln_sources}
unset _kiln_components _kiln_sources _kiln_security_suite
