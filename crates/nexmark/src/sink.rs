//! The answer sink: one CSV line per result, exactly once across
//! recoveries (a checkpoint records the file's length; a restored sink cuts
//! the file back to it before the replay writes the rest again).

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use spate_engine::{Data, InstanceContext, OperatorError, Sink};

/// Writes each result as the line `format` makes of it.
pub struct LineSink<T> {
    out: BufWriter<File>,
    format: fn(&T) -> String,
}

impl<T> LineSink<T> {
    /// Creates (truncates) `path`; when restoring, opens it as it is, for
    /// [`Sink::restore`] to cut back.
    pub fn create(
        path: &Path,
        format: fn(&T) -> String,
        ctx: &InstanceContext,
    ) -> Result<Self, OperatorError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(!ctx.restoring)
            .open(path)
            .map_err(|e| OperatorError::new(format!("cannot create {}: {e}", path.display())))?;
        Ok(LineSink {
            out: BufWriter::with_capacity(1 << 20, file),
            format,
        })
    }
}

impl<T: Data> Sink for LineSink<T> {
    type In = T;

    fn write(&mut self, value: T) -> Result<(), OperatorError> {
        let line = (self.format)(&value);
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<Vec<u8>, OperatorError> {
        self.out.flush()?;
        Ok(self.out.get_mut().stream_position()?.to_le_bytes().to_vec())
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        // An empty position is the start of the file.
        let offset = match state {
            [] => 0,
            bytes => <[u8; 8]>::try_from(bytes)
                .map(u64::from_le_bytes)
                .map_err(|_| OperatorError::new("a sink position must be 8 bytes"))?,
        };
        let file = self.out.get_mut();
        file.set_len(offset)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), OperatorError> {
        self.out.flush()?;
        Ok(())
    }
}
