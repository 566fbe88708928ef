# shellcheck shell=bash
# The disk has a GPT partition table and boots with a BIOS (sourced, not executed).
case "${ARCH:-}" in
    arm64|aarch64)
        echo "block-device-gpt: ARCH=$ARCH cannot boot from a GPT disk with a BIOS;" \
             "use block-device-efi" >&2
        exit 1
        ;;
esac
export DIB_BLOCK_DEVICE=gpt
