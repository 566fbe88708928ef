# shellcheck shell=bash
# The disk has a DOS (MBR) partition table and boots with a BIOS (sourced, not executed).
case "${ARCH:-}" in
    arm64|aarch64)
        echo "block-device-mbr: ARCH=$ARCH cannot boot from an MBR disk with a BIOS;" \
             "use block-device-efi" >&2
        exit 1
        ;;
esac
export DIB_BLOCK_DEVICE=mbr
