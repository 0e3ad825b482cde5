//! The text form shared by mesh IDs, credentials and revocation lists: a
//! prefix, then lowercase base32 (no padding) of the bytes and a 4-byte
//! BLAKE3 checksum that catches typos and truncated copies.

use super::{malformed, MembershipError};

const CHECKSUM_LEN: usize = 4;

pub(super) fn encode_text(prefix: &str, raw: &[u8]) -> String {
    let mut body = raw.to_vec();
    body.extend_from_slice(&blake3::hash(raw).as_bytes()[..CHECKSUM_LEN]);
    let text = data_encoding::BASE32_NOPAD.encode(&body);
    format!("{prefix}{}", text.to_ascii_lowercase())
}

pub(super) fn decode_text(
    what: &'static str,
    prefix: &str,
    s: &str,
) -> Result<Vec<u8>, MembershipError> {
    let s = s.trim();
    let body = s.strip_prefix(prefix).ok_or_else(|| {
        malformed(
            what,
            format!(
                "it must start with {prefix:?} (got {:?})",
                s.chars().take(12).collect::<String>()
            ),
        )
    })?;
    let mut raw = data_encoding::BASE32_NOPAD
        .decode(body.to_ascii_uppercase().as_bytes())
        .map_err(|_| malformed(what, format!("not valid base32 after {prefix:?}")))?;
    if raw.len() < CHECKSUM_LEN {
        return Err(malformed(what, "too short"));
    }
    let sum = raw.split_off(raw.len() - CHECKSUM_LEN);
    if blake3::hash(&raw).as_bytes()[..CHECKSUM_LEN] != sum[..] {
        return Err(malformed(what, "checksum mismatch (was it copied whole?)"));
    }
    Ok(raw)
}

/// Reads fixed-size fields off a byte slice.
pub(super) struct Reader<'a> {
    what: &'static str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(what: &'static str, bytes: &'a [u8]) -> Self {
        Self { what, rest: bytes }
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], MembershipError> {
        if self.rest.len() < n {
            return Err(malformed(self.what, "truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(super) fn u8(&mut self) -> Result<u8, MembershipError> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u32(&mut self) -> Result<u32, MembershipError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub(super) fn u64(&mut self) -> Result<u64, MembershipError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    pub(super) fn end(&self) -> Result<(), MembershipError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed(self.what, "trailing bytes"))
        }
    }
}
