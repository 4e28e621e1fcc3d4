//! Standard output for command lines that are piped: a reader that goes
//! away (`cassette events | head -1`) ends the command quietly, as it would
//! a Unix tool, instead of a panic in `println!`.

use std::io::Write;

/// Writes `args` to standard output. A reader that closed the pipe has all
/// it wanted: the process exits 0. Other write errors are returned.
pub fn write(args: std::fmt::Arguments) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        result => result,
    }
}

/// `print!` through [`write`]: evaluates to `std::io::Result<()>`.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!($($arg)*))
    };
}

/// `println!` through [`write`]: evaluates to `std::io::Result<()>`.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::stdout::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}
