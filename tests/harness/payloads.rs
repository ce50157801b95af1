//! Large payloads made the same way by the test flows (`big_result`) and by the tests that
//! check what those flows returned.

/// `len` bytes of text, the same every time: lines `block 0000000000`, `block 0000000001`, ...
/// (17 bytes each with their newline), cut at `len`.
pub fn big_text(len: usize) -> String {
    let mut text = String::with_capacity(len + 17);
    let mut i = 0u64;
    while text.len() < len {
        text.push_str(&format!("block {i:010}\n"));
        i += 1;
    }
    text.truncate(len);
    text
}

/// FNV-1a (64 bits) of `bytes`, in hex: what a test compares a replayed value by.
pub fn fnv1a(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}
