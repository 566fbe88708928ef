# shellcheck shell=bash
# Defaults for the dpkg element (sourced, not executed).
export DIB_APT_LOCAL_CACHE=${DIB_APT_LOCAL_CACHE:-1}
export DIB_DISABLE_APT_CLEANUP=${DIB_DISABLE_APT_CLEANUP:-0}
export DIB_ADD_APT_KEYS=${DIB_ADD_APT_KEYS:-}
