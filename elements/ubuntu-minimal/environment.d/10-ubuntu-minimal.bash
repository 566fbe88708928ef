# shellcheck shell=bash
# Ubuntu built from scratch with debootstrap (sourced, not executed).
export DIB_UBUNTU_KERNEL=${DIB_UBUNTU_KERNEL:-linux-image-generic}
# kiln addition: 0 leaves out the kernel and initramfs-tools (the container element sets it).
export DIB_INSTALL_KERNEL=${DIB_INSTALL_KERNEL:-1}
# Pockets added next to the release itself, comma separated.
export DIB_UBUNTU_MIRROR_DISTS=${DIB_UBUNTU_MIRROR_DISTS:-updates,security,backports}

# One "name:deb-line" entry per line; root.d writes /etc/apt/sources.list.d/<name>.list.
_kiln_components=${DIB_DEBIAN_COMPONENTS//,/ }
_kiln_sources="default:deb ${DIB_DISTRIBUTION_MIRROR:-} ${DIB_RELEASE} ${_kiln_components}"
for _kiln_pocket in ${DIB_UBUNTU_MIRROR_DISTS//,/ }; do
    if [ "$_kiln_pocket" = security ]; then
        _kiln_url=${DIB_UBUNTU_SECURITY_MIRROR:-${DIB_DISTRIBUTION_MIRROR:-}}
    else
        _kiln_url=${DIB_DISTRIBUTION_MIRROR:-}
    fi
    _kiln_sources="${_kiln_sources}
${_kiln_pocket}:deb ${_kiln_url} ${DIB_RELEASE}-${_kiln_pocket} ${_kiln_components}"
done
export DIB_APT_SOURCES_CONF=${DIB_APT_SOURCES_CONF:-$_kiln_sources}
unset _kiln_components _kiln_sources _kiln_pocket _kiln_url
