//! Exit codes, as linkerd2-proxy uses them: a configuration the user must fix is EX_USAGE.

/// sysexits.h EX_USAGE: the command line or a configuration file is wrong.
pub const BAD_CONFIG: i32 = 64;
/// Any other failure to start or to keep serving.
pub const FAILURE: i32 = 1;
