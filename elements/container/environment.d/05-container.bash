# shellcheck shell=bash
# A container shares its host's kernel and boots no loader (sourced, not executed): the
# operating-system elements (debian-minimal, ubuntu-minimal) install no kernel and no
# initramfs-tools when DIB_INSTALL_KERNEL is 0. Sourced before their environment.d (10-*).
export DIB_INSTALL_KERNEL=0
