//! The `--log-dir` copy of the log: a second `tracing` output (no colours) that writes
//! to a file once `serve` knows its node id, and to nothing before.

use parking_lot::{Mutex, MutexGuard};
use std::fs::File;
use std::io::Write;

use tracing_subscriber::fmt::MakeWriter;

static FILE: Mutex<Option<File>> = Mutex::new(None);

fn slot() -> MutexGuard<'static, Option<File>> {
    FILE.lock()
}

/// From now on every log line is also appended to `file`.
pub(crate) fn attach(file: File) {
    *slot() = Some(file);
}

/// The writer of the file output (a no-op until [`attach`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FileSlot;

impl<'a> MakeWriter<'a> for FileSlot {
    type Writer = FileSlot;

    fn make_writer(&'a self) -> Self::Writer {
        FileSlot
    }
}

impl Write for FileSlot {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = slot().as_mut() {
            // a full disk must not take the node down: the line is lost, not the node
            let _ = f.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(f) = slot().as_mut() {
            let _ = f.flush();
        }
        Ok(())
    }
}
