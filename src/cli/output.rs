//! Standard output for commands. A reader that goes away (`cartwatch status | head -3`) ends
//! the command quietly instead of panicking, as `println!` would.

use std::io::Write;

/// Standard output could not be written: the reader closed it, or the disk it goes to is full.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output: {0}")]
pub struct Closed(#[source] pub std::io::Error);

impl Closed {
    /// Whether the reader simply went away, which is no failure of the command's.
    pub fn reader_left(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// Writes `text` to standard output and flushes it.
///
/// Fails when standard output cannot be written.
pub fn write(text: std::fmt::Arguments<'_>) -> Result<(), Closed> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(text).and_then(|()| stdout.flush()).map_err(Closed)
}

/// Prints a line to standard output, returning [`Closed`] (through `?`) when it cannot.
#[macro_export]
macro_rules! say {
    () => { $crate::cli::output::write(format_args!("\n"))? };
    ($($arg:tt)*) => { $crate::cli::output::write(format_args!("{}\n", format_args!($($arg)*)))? };
}

/// Prints to standard output without a newline, returning [`Closed`] when it cannot.
#[macro_export]
macro_rules! say_raw {
    ($($arg:tt)*) => { $crate::cli::output::write(format_args!($($arg)*))? };
}
