//! Logging set-up: text or JSON on stderr, and nothing a caller sends can forge or flood a log
//! line.
//!
//! The JSON format escapes every string already. In the text format, field values and messages
//! are written as they are, so a `user_id` holding a newline could start a forged line: here
//! every control character in a field or message is written as an escape (`\n`, `\u{1b}`).
//! Lengths are bounded before anything is logged (`service::checks`). A panic, whatever thread
//! it happens on, is one escaped error line (with a backtrace only if `RUST_BACKTRACE` asks).

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::Field;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{Writer, debug_fn};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("RUST_LOG (--log): {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    #[error("a logger is already installed: {0}")]
    Installed(String),
}

/// Installs the process's subscriber (once) and the panic hook.
pub fn init(format: LogFormat, filter: &str) -> Result<(), LoggingError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .fmt_fields(debug_fn(write_field).delimited(" "))
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| LoggingError::Installed(e.to_string()))?;
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => backtrace.to_string(),
            _ => String::new(),
        };
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            location = %info.location().map_or_else(String::new, ToString::to_string),
            payload = panic_text(info.payload()),
            backtrace = %backtrace,
            "panic"
        );
    }));
    Ok(())
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not text)")
}

fn write_field(w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    if field.name() != "message" {
        write!(w, "{}=", field.name())?;
    }
    write!(Escaped(w), "{value:?}")
}

/// Writes through to `W`, every control character escaped.
struct Escaped<W>(W);

impl<W: fmt::Write> fmt::Write for Escaped<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for part in s.split_inclusive(char::is_control) {
            let mut chars = part.chars();
            match chars.next_back() {
                Some(c) if c.is_control() => {
                    self.0.write_str(chars.as_str())?;
                    write!(self.0, "{}", c.escape_default())?;
                }
                _ => self.0.write_str(part)?,
            }
        }
        Ok(())
    }
}

/// `s` with every control character escaped, as log lines show it.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let _ = write!(Escaped(&mut out), "{s}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_start_a_line_or_colour_it() {
        assert_eq!(escape("plain text"), "plain text");
        assert_eq!(
            escape("u1\n2026-01-01T00:00:00Z ERROR forged"),
            "u1\\n2026-01-01T00:00:00Z ERROR forged"
        );
        assert_eq!(escape("nul\0esc\u{1b}[31m"), "nul\\u{0}esc\\u{1b}[31m");
        assert_eq!(escape("tab\tcr\r"), "tab\\tcr\\r");
        assert!(!escape("\u{85}\u{9b}x").chars().any(char::is_control));
    }
}
