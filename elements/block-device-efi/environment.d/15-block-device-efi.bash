# shellcheck shell=bash
# The disk has a GPT partition table with an EFI system partition and boots with UEFI (and a
# BIOS on x86) (sourced, not executed).
case "${ARCH:-}" in
    ppc64|ppc64el|ppc64le|s390x)
        echo "block-device-efi: ARCH=$ARCH does not boot with UEFI; use block-device-mbr or" \
             "block-device-gpt" >&2
        exit 1
        ;;
esac
export DIB_BLOCK_DEVICE=efi
# The layout of block-device-default.yaml, for hooks that need it.
export DIB_EFI_PARTITION_SIZE=${DIB_EFI_PARTITION_SIZE:-550MiB}
export DIB_EFI_MOUNT_POINT=${DIB_EFI_MOUNT_POINT:-/boot/efi}
