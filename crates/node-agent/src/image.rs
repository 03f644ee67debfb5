//! The image map: which local program stands in for which container image.
//!
//! There is no image store. `--image NAME=PROGRAM` says that a container of
//! image `NAME` runs `PROGRAM`. A container's image is looked up with its tag
//! or digest first (`rtc/python:3.13`), then without it (`rtc/python`), so a
//! map entry without a tag serves every tag and an entry with one can single
//! a tag out.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// An image map entry or lookup that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// A `NAME=PROGRAM` entry is malformed.
    #[error(
        "invalid image mapping {entry:?}: {reason}; expected NAME=PROGRAM, e.g. rtc/python=/usr/bin/python3"
    )]
    BadEntry {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same image is mapped twice to different programs.
    #[error("image {image:?} is mapped twice: to {first} and to {second}")]
    Duplicate {
        /// The image name.
        image: String,
        /// The first program.
        first: String,
        /// The second program.
        second: String,
    },
    /// No entry matches a container's image.
    #[error("image {image:?} is not in this node's image map; mapped images: {mapped}")]
    NotMapped {
        /// The container's image.
        image: String,
        /// The mapped image names, comma-separated (`none` when empty).
        mapped: String,
    },
}

impl ImageError {
    /// A short, fixed label for this kind of error, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadEntry { .. } => "bad_entry",
            Self::Duplicate { .. } => "duplicate",
            Self::NotMapped { .. } => "not_mapped",
        }
    }
}

/// Image names mapped to local programs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMap {
    programs: BTreeMap<String, PathBuf>,
}

impl ImageMap {
    /// Builds the map from `NAME=PROGRAM` entries (from `--image` flags and
    /// the comma-separated `IMAGE_MAP`).
    ///
    /// # Errors
    ///
    /// [`ImageError::BadEntry`] for an entry without `=`, an empty side or a
    /// relative program path; [`ImageError::Duplicate`] when one image is
    /// mapped to two programs.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ImageError> {
        let mut programs: BTreeMap<String, PathBuf> = BTreeMap::new();
        for entry in entries {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let bad = |reason| ImageError::BadEntry {
                entry: entry.to_owned(),
                reason,
            };
            let (name, program) = entry.split_once('=').ok_or_else(|| bad("it has no '='"))?;
            let (name, program) = (name.trim(), program.trim());
            if name.is_empty() {
                return Err(bad("the image name is empty"));
            }
            if program.is_empty() {
                return Err(bad("the program is empty"));
            }
            if !Path::new(program).is_absolute() {
                return Err(bad("the program must be an absolute path"));
            }
            match programs.get(name) {
                Some(first) if first != Path::new(program) => {
                    return Err(ImageError::Duplicate {
                        image: name.to_owned(),
                        first: first.display().to_string(),
                        second: program.to_owned(),
                    });
                }
                _ => {
                    programs.insert(name.to_owned(), PathBuf::from(program));
                }
            }
        }
        Ok(Self { programs })
    }

    /// The program for `image`: the entry for the full reference, else the
    /// entry for the reference without its tag or digest.
    ///
    /// # Errors
    ///
    /// [`ImageError::NotMapped`] naming the image and every mapped name.
    pub fn program(&self, image: &str) -> Result<&Path, ImageError> {
        if let Some(program) = self.programs.get(image) {
            return Ok(program);
        }
        if let Some(program) = self.programs.get(without_tag(image)) {
            return Ok(program);
        }
        Err(ImageError::NotMapped {
            image: image.to_owned(),
            mapped: self.to_string(),
        })
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
    }
}

impl fmt::Display for ImageMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.programs.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        for name in self.programs.keys() {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// `image` without its `@digest` and `:tag`; a `:` before the last `/` is a
/// registry port, not a tag.
pub fn without_tag(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(name, _digest)| name);
    let last_part = image.rfind('/').map_or(0, |slash| slash + 1);
    match image[last_part..].rfind(':') {
        Some(colon) => &image[..last_part + colon],
        None => image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[&str]) -> ImageMap {
        ImageMap::from_entries(entries.iter().copied()).expect("valid map")
    }

    #[test]
    fn tags_digests_and_registry_ports_are_told_apart() {
        assert_eq!(without_tag("rtc/python:3.13"), "rtc/python");
        assert_eq!(without_tag("rtc/python"), "rtc/python");
        assert_eq!(
            without_tag("localhost:5000/rtc/python"),
            "localhost:5000/rtc/python"
        );
        assert_eq!(
            without_tag("localhost:5000/rtc/python:1"),
            "localhost:5000/rtc/python"
        );
        assert_eq!(without_tag("rtc/python@sha256:abc"), "rtc/python");
        assert_eq!(without_tag("rtc/python:1@sha256:abc"), "rtc/python");
        assert_eq!(without_tag(""), "");
    }

    #[test]
    fn an_untagged_entry_serves_every_tag() {
        let images = map(&["rtc/python=/usr/bin/python3"]);
        assert_eq!(
            images.program("rtc/python"),
            Ok(Path::new("/usr/bin/python3"))
        );
        assert_eq!(
            images.program("rtc/python:latest"),
            Ok(Path::new("/usr/bin/python3"))
        );
    }

    #[test]
    fn a_tagged_entry_wins_over_the_untagged_one() {
        let images = map(&[
            "rtc/python=/usr/bin/python3",
            "rtc/python:2=/usr/bin/python2",
        ]);
        assert_eq!(
            images.program("rtc/python:2"),
            Ok(Path::new("/usr/bin/python2"))
        );
        assert_eq!(
            images.program("rtc/python:3"),
            Ok(Path::new("/usr/bin/python3"))
        );
    }

    #[test]
    fn an_unmapped_image_names_itself_and_the_mapped_ones() {
        let images = map(&["rtc/b=/bin/b", "rtc/a=/bin/a"]);
        let err = images.program("nginx:1.27").expect_err("unmapped");
        assert_eq!(
            err.to_string(),
            "image \"nginx:1.27\" is not in this node's image map; mapped images: rtc/a, rtc/b"
        );
        assert_eq!(err.label(), "not_mapped");
        let empty = map(&[]);
        assert!(empty.is_empty());
        assert!(
            empty
                .program("x")
                .expect_err("empty")
                .to_string()
                .ends_with("mapped images: none")
        );
    }

    #[test]
    fn malformed_entries_are_refused() {
        for (entry, reason) in [
            ("rtc/python", "it has no '='"),
            ("=/bin/x", "the image name is empty"),
            ("rtc/x=", "the program is empty"),
            ("rtc/x=python3", "the program must be an absolute path"),
        ] {
            let err = ImageMap::from_entries([entry]).expect_err(entry);
            assert_eq!(
                err,
                ImageError::BadEntry {
                    entry: entry.to_owned(),
                    reason
                }
            );
        }
    }

    #[test]
    fn duplicates_must_agree() {
        assert!(ImageMap::from_entries(["a=/bin/a", "a=/bin/a"]).is_ok());
        let err = ImageMap::from_entries(["a=/bin/a", "a=/bin/b"]).expect_err("duplicate");
        assert_eq!(err.label(), "duplicate");
    }

    #[test]
    fn blank_entries_are_skipped() {
        let images = map(&["", "  ", " rtc/a = /bin/a "]);
        assert_eq!(images.program("rtc/a"), Ok(Path::new("/bin/a")));
    }
}
