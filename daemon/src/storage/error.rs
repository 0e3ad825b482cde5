//! Mapping I/O failures onto [`StorageError`]: a full disk or exceeded quota
//! is [`StorageError::Full`] wherever it happens; anything else is `Io`.

use std::io;

use super::StorageError;

/// Whether `e` means "no space left" (ENOSPC) or "quota exceeded" (EDQUOT).
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
}

/// Classify an I/O error. Use this instead of `?` (whose `From` impl would
/// always produce `Io`).
pub(crate) fn classify(e: io::Error) -> StorageError {
    if is_disk_full(&e) {
        StorageError::Full(std::sync::Arc::new(e))
    } else {
        StorageError::Io(std::sync::Arc::new(e))
    }
}

/// A panicked or cancelled blocking task, as an I/O error.
pub(crate) fn join_error(e: tokio::task::JoinError) -> io::Error {
    io::Error::other(format!("storage I/O task failed: {e}"))
}

/// The error for using a writer after it failed or was committed.
pub(crate) fn writer_closed() -> StorageError {
    StorageError::Io(std::sync::Arc::new(io::Error::other(
        "object writer is closed (an earlier write failed or was interrupted)",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_and_edquot_are_full() {
        for code in [libc::ENOSPC, libc::EDQUOT] {
            let e = io::Error::from_raw_os_error(code);
            assert!(is_disk_full(&e));
            assert!(matches!(classify(e), StorageError::Full(_)), "code {code}");
        }
    }

    #[test]
    fn other_errors_are_io() {
        for e in [
            io::Error::from_raw_os_error(libc::EIO),
            io::Error::from_raw_os_error(libc::EACCES),
            io::Error::new(io::ErrorKind::NotFound, "gone"),
            io::Error::other("no os code"),
        ] {
            assert!(!is_disk_full(&e));
            assert!(matches!(classify(e), StorageError::Io(_)));
        }
    }

    #[test]
    fn full_error_message_is_actionable() {
        let msg = classify(io::Error::from_raw_os_error(libc::ENOSPC)).to_string();
        assert!(msg.contains("disk is full"), "{msg}");
    }
}
