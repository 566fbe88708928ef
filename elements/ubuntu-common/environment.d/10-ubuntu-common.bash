# shellcheck shell=bash
# Ubuntu as the image's operating system (sourced, not executed).
#
# The package mirror is DIB_DISTRIBUTION_MIRROR; when unset it is taken from the build host's own
# apt sources: a URI ending in /ubuntu for amd64 and i386, in /ubuntu-ports for other
# architectures (or, on an Ubuntu host of the same architecture family, any non-security one).
# If none is found the variable stays empty and the root.d hooks stop with an error asking for
# DIB_DISTRIBUTION_MIRROR.

export DISTRO_NAME=ubuntu
export DIB_RELEASE=${DIB_RELEASE:-noble}
export DIB_DEBIAN_COMPONENTS=${DIB_DEBIAN_COMPONENTS:-main,universe}
case "$DIB_RELEASE" in
    trusty) _kiln_init=upstart ;;
    *) _kiln_init=systemd ;;
esac
export DIB_INIT_SYSTEM=${DIB_INIT_SYSTEM:-$_kiln_init}
export EFI_BOOT_DIR=${EFI_BOOT_DIR:-EFI/ubuntu}

case "${ARCH:-amd64}" in
    amd64|x86_64|i386) _kiln_archive='/ubuntu$'; _kiln_primary=1 ;;
    *) _kiln_archive='/ubuntu-ports$'; _kiln_primary=0 ;;
esac
if [ -z "${DIB_DISTRIBUTION_MIRROR:-}" ] && declare -F _kiln_apt_pick >/dev/null; then
    DIB_DISTRIBUTION_MIRROR=$(_kiln_apt_pick main "$_kiln_archive") || true
    if [ -z "$DIB_DISTRIBUTION_MIRROR" ] && [ "$_kiln_primary" -eq 1 ] && _kiln_host_os_id_is ubuntu; then
        DIB_DISTRIBUTION_MIRROR=$(_kiln_apt_pick main '.') || true
    fi
fi
DIB_DISTRIBUTION_MIRROR=${DIB_DISTRIBUTION_MIRROR:-}
export DIB_DISTRIBUTION_MIRROR=${DIB_DISTRIBUTION_MIRROR%/}

# Ubuntu's security pocket is also on the archive mirrors; a dedicated security mirror from the
# host's sources (same archive layout) is preferred when there is one.
if [ -z "${DIB_UBUNTU_SECURITY_MIRROR:-}" ] && declare -F _kiln_apt_pick >/dev/null; then
    DIB_UBUNTU_SECURITY_MIRROR=$(_kiln_apt_pick security "$_kiln_archive") || true
fi
DIB_UBUNTU_SECURITY_MIRROR=${DIB_UBUNTU_SECURITY_MIRROR:-$DIB_DISTRIBUTION_MIRROR}
export DIB_UBUNTU_SECURITY_MIRROR=${DIB_UBUNTU_SECURITY_MIRROR%/}
unset _kiln_init _kiln_archive _kiln_primary
