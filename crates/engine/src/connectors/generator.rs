//! Generated tuples as a source: the `n`th tuple made from `n`, at a rate.

use std::sync::Arc;

use super::pace::Pace;
use super::{decode_position, encode_position};
use crate::api::{Data, OperatorError, Source, SourceStep};

/// Makes the tuple with sequence number `n`.
type Make<T> = Arc<dyn Fn(u64) -> T + Send + Sync>;

/// Emits `make(0)`, `make(1)`, ... at a rate of tuples a second, up to a
/// limit or forever: test loads and benchmarks without an input file. As
/// each tuple is a function of its sequence number, the checkpoint is that
/// number and a restored generator emits exactly what the failed one
/// would have.
///
/// ```
/// use spate_engine::connectors::Generator;
/// use spate_engine::{Source, SourceStep};
///
/// let mut squares = Generator::new(|n| n * n).limit(4);
/// let mut made = Vec::new();
/// while let SourceStep::Emit(square) = squares.next()? {
///     made.push(square);
/// }
/// assert_eq!(made, [0, 1, 4, 9]);
///
/// // 1,000 a second, restored after the second tuple.
/// let mut paced = Generator::new(|n| n * n).rate(1_000.0);
/// let mut emitted = 0;
/// while emitted < 2 {
///     if let SourceStep::Emit(_) = paced.next()? {
///         emitted += 1;
///     }
/// }
/// let position = paced.checkpoint()?.unwrap();
/// let mut restored = Generator::new(|n| n * n).rate(1_000.0);
/// restored.restore(&position)?;
/// loop {
///     match restored.next()? {
///         SourceStep::Emit(square) => break assert_eq!(square, 4),
///         SourceStep::WaitUntil(due) => std::thread::sleep(due - std::time::Instant::now()),
///         SourceStep::Done => unreachable!("no limit"),
///     }
/// }
/// # Ok::<(), spate_engine::OperatorError>(())
/// ```
pub struct Generator<T> {
    make: Make<T>,
    /// The next sequence number.
    next: u64,
    limit: Option<u64>,
    pace: Pace,
}

impl<T> Clone for Generator<T> {
    fn clone(&self) -> Self {
        Generator {
            make: self.make.clone(),
            next: self.next,
            limit: self.limit,
            pace: self.pace.clone(),
        }
    }
}

impl<T> Generator<T> {
    /// Tuples `make(0)`, `make(1)`, ..., unpaced and without end. `make`
    /// must depend on `n` alone, so that a restored generator repeats it.
    pub fn new(make: impl Fn(u64) -> T + Send + Sync + 'static) -> Self {
        Generator {
            make: Arc::new(make),
            next: 0,
            limit: None,
            pace: Pace::default(),
        }
    }

    /// At most `per_sec` tuples a second (0: as fast as the job takes them).
    pub fn rate(mut self, per_sec: f64) -> Self {
        self.pace = Pace::new(per_sec);
        self
    }

    /// Ends after `count` tuples.
    pub fn limit(mut self, count: u64) -> Self {
        self.limit = Some(count);
        self
    }
}

impl<T: Data> Source for Generator<T> {
    type Out = T;

    fn next(&mut self) -> Result<SourceStep<T>, OperatorError> {
        if self.limit.is_some_and(|limit| self.next >= limit) {
            return Ok(SourceStep::Done);
        }
        if let Some(due) = self.pace.wait(self.next) {
            return Ok(SourceStep::WaitUntil(due));
        }
        self.next += 1;
        Ok(SourceStep::Emit((self.make)(self.next - 1)))
    }

    fn checkpoint(&mut self) -> Result<Option<Vec<u8>>, OperatorError> {
        encode_position(&self.next).map(Some)
    }

    fn restore(&mut self, position: &[u8]) -> Result<(), OperatorError> {
        self.next = decode_position(position)?;
        self.pace.resume_at(self.next);
        Ok(())
    }
}
