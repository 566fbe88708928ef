//! The one error type of kiln-element.
//!
//! Every variant names the file (or directory) it is about, and the line and column when the
//! problem is inside a YAML or JSON file, because the reader of the message is usually an
//! element author who has to open that file and fix it. Each message is one sentence about
//! what is wrong followed by what to do about it.

use std::fmt;
use std::path::{Path, PathBuf};

/// Everything that can go wrong while discovering, resolving, parsing or merging elements.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `ELEMENTS_PATH` entry does not exist or is not a directory.
    #[error(
        "ELEMENTS_PATH entry {} is not a directory; fix ELEMENTS_PATH so that every entry is an existing directory of elements",
        path.display()
    )]
    NotADirectory {
        /// The offending entry.
        path: PathBuf,
    },

    /// A requested element, or an element named in some `element-deps`, exists nowhere on the path.
    #[error(
        "element '{name}' not found{}{}; {}",
        needed_by_text(needed_by.as_deref()),
        search_text(searched),
        suggestion_text(suggestions)
    )]
    UnknownElement {
        /// The missing element.
        name: String,
        /// Close names that do exist ("did you mean ...?").
        suggestions: Vec<String>,
        /// The `element-deps` file that asked for it; `None` when it was requested directly.
        needed_by: Option<PathBuf>,
        /// The `ELEMENTS_PATH` entries that were searched.
        searched: Vec<PathBuf>,
    },

    /// Two elements declare the same name in `element-provides`.
    #[error(
        "'{name}' is provided by more than one element ({}); each name may be provided once, so drop all but one of these elements",
        provider_text(by, files)
    )]
    AlreadyProvided {
        /// The doubly provided name.
        name: String,
        /// The elements that provide it, first provider first.
        by: Vec<String>,
        /// Their `element-provides` files, in the same order as `by`.
        files: Vec<PathBuf>,
    },

    /// An element was requested by name, but another element already provides that name.
    #[error(
        "element '{name}' was requested but is also provided by element '{by}' ({}); remove '{name}' or '{by}' from the element list",
        file.display()
    )]
    ProvidedUserElement {
        /// The requested element.
        name: String,
        /// The element providing it.
        by: String,
        /// The providing element's `element-provides` file.
        file: PathBuf,
    },

    /// No element in the set provides `operating-system`.
    #[error(
        "Please include an operating system element: none of the elements asked for ({}) provides 'operating-system'{}",
        elements.join(" "),
        candidates_text(candidates)
    )]
    NoOperatingSystem {
        /// The elements that were asked for (after `base` and the block-device default were added).
        elements: Vec<String>,
        /// Elements on the path that provide `operating-system`, for the hint.
        candidates: Vec<String>,
    },

    /// A YAML file could not be parsed.
    #[error("{}: invalid YAML: {message}; fix the syntax at that place", location(path, *line, *column))]
    Yaml {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// The parser's message.
        message: String,
    },

    /// A JSON file could not be parsed, or does not have the expected shape.
    #[error("{}: invalid JSON: {message}; fix the file at that place", location(path, *line, *column))]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// The parser's message.
        message: String,
    },

    /// A package-installs entry gives both `arch` and `not-arch`.
    #[error(
        "{}: package '{package}' gives both 'arch' and 'not-arch'; keep only one of them",
        location(path, *line, None)
    )]
    ArchAndNotArch {
        /// The package-installs file.
        path: PathBuf,
        /// The line of the entry, when known.
        line: Option<usize>,
        /// The package.
        package: String,
    },

    /// A package-installs `when:` names an environment variable that is not set.
    #[error(
        "{}: package '{package}' has a 'when' condition on ${variable}, which is not set; export {variable} (an empty value is allowed) or change the condition",
        location(path, *line, None)
    )]
    WhenUnsetVariable {
        /// The package-installs file.
        path: PathBuf,
        /// The line of the entry, when known.
        line: Option<usize>,
        /// The package.
        package: String,
        /// The unset variable.
        variable: String,
    },

    /// A package-installs `when:` statement is not of the form `VAR = value` or `VAR != value`.
    #[error(
        "{}: package '{package}' has a malformed 'when' condition {statement:?}; write it as \"VARIABLE = value\" or \"VARIABLE != value\" (or a list of those)",
        location(path, *line, None)
    )]
    BadWhen {
        /// The package-installs file.
        path: PathBuf,
        /// The line of the entry, when known.
        line: Option<usize>,
        /// The package.
        package: String,
        /// The statement as written.
        statement: String,
    },

    /// A package-installs entry has the wrong shape (not a map, a non-string phase, ...).
    #[error("{}: {}{message}", location(path, *line, None), entry_text(package))]
    BadPackageParams {
        /// The package-installs file.
        path: PathBuf,
        /// The line of the entry, when known.
        line: Option<usize>,
        /// The package (empty when the whole file has the wrong shape).
        package: String,
        /// What is wrong and what to do.
        message: String,
    },

    /// Two elements ship a file of the same name in the same merged directory.
    #[error(
        "duplicate hook '{name}' in {dir}: element '{first_element}' has {} and element '{second_element}' has {}; file names must be unique across elements in each merged directory, so rename one of them",
        first_path.display(),
        second_path.display()
    )]
    DuplicateHook {
        /// The merged directory, e.g. `install.d` (`.` for the top level).
        dir: String,
        /// The file name.
        name: String,
        /// The element whose file came first.
        first_element: String,
        /// That file.
        first_path: PathBuf,
        /// The element whose file clashed.
        second_element: String,
        /// That file.
        second_path: PathBuf,
    },

    /// A directory under an `ELEMENTS_PATH` entry has a name that cannot be an element name.
    #[error(
        "{}: '{name}' cannot be an element name: {reason}; rename the directory or move it out of ELEMENTS_PATH",
        path.display()
    )]
    BadElementName {
        /// The directory.
        path: PathBuf,
        /// Its name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An element holds a FIFO, socket or device (or a symlink to one).
    #[error(
        "{}: is a {kind}, not a regular file or directory; element files are read by kiln and copied into the build, so remove it or replace it with a regular file",
        path.display()
    )]
    SpecialFile {
        /// The file.
        path: PathBuf,
        /// What it is (`FIFO`, `socket`, `block device`, `character device`).
        kind: &'static str,
    },

    /// A file or directory could not be read or written.
    #[error("{}: {source}; check that the path exists and is accessible", path.display())]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for `.map_err(|e| Error::io(path, e))`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T, Error>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T, Error> {
        self.map_err(|e| Error::io(path, e))
    }
}

/// `path:line:column`, leaving out what is unknown.
fn location(path: &Path, line: Option<usize>, column: Option<usize>) -> Location<'_> {
    Location { path, line, column }
}

struct Location<'a> {
    path: &'a Path,
    line: Option<usize>,
    column: Option<usize>,
}

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

fn entry_text(package: &str) -> String {
    if package.is_empty() {
        String::new()
    } else {
        format!("package '{package}': ")
    }
}

fn needed_by_text(needed_by: Option<&Path>) -> String {
    match needed_by {
        Some(path) => format!(" (listed in {})", path.display()),
        None => String::new(),
    }
}

fn search_text(searched: &[PathBuf]) -> String {
    if searched.is_empty() {
        return " (ELEMENTS_PATH is empty)".to_string();
    }
    let joined: Vec<String> = searched.iter().map(|p| p.display().to_string()).collect();
    format!(" in ELEMENTS_PATH {}", joined.join(":"))
}

fn suggestion_text(suggestions: &[String]) -> String {
    match suggestions {
        [] => "check the spelling, or add the directory that holds it to ELEMENTS_PATH".to_string(),
        [one] => format!("did you mean '{one}'?"),
        many => {
            let quoted: Vec<String> = many.iter().map(|s| format!("'{s}'")).collect();
            format!("did you mean one of {}?", quoted.join(", "))
        }
    }
}

fn provider_text(by: &[String], files: &[PathBuf]) -> String {
    by.iter()
        .enumerate()
        .map(|(i, name)| match files.get(i) {
            Some(file) => format!("'{name}' in {}", file.display()),
            None => format!("'{name}'"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn candidates_text(candidates: &[String]) -> String {
    if candidates.is_empty() {
        "; add an element that lists operating-system in its element-provides".to_string()
    } else {
        format!("; add one of: {}", candidates.join(", "))
    }
}
