//! Where a config problem is: byte offsets of the source text mapped to `file:line:column`,
//! and the errors that carry every problem found.

use serde_spanned::Spanned;
use std::fmt;

/// One thing wrong with a config file, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `file:line:column`, or just the file when no position is known.
    pub location: String,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file itself could not be read.
    #[error("{path}: cannot read config: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but has problems; all of them are listed.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

fn display_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    format!(
        "{} problem(s) in config:\n{}",
        problems.len(),
        lines.join("\n")
    )
}

impl ConfigError {
    /// The problems, for callers that report them one by one.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Read { path, source } => vec![Problem {
                location: path.clone(),
                message: format!("cannot read config: {source}"),
            }],
            ConfigError::Invalid(p) => p.clone(),
        }
    }
}

/// Maps byte offsets of the source text to `file:line:column`.
pub struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn at(&self, offset: usize) -> String {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("{}:{}:{}", self.file, line, col)
    }

    /// A problem at `span`'s start, or at the file when the value was defaulted (empty span).
    pub fn problem<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> Problem {
        let span = spanned.span();
        let location = if span.is_empty() && span.start == 0 {
            self.file.to_string()
        } else {
            self.at(span.start)
        };
        Problem {
            location,
            message: message.into(),
        }
    }
}
