//! Man pages rendered from a clap command line (minitower's, leasectl's).
//!
//! clap_mangen renders the options and subcommands well, but it fills the
//! `after_help` text (examples, output formats, exit codes) into paragraphs,
//! which scrambles every aligned table and example in it. This renderer uses
//! clap_mangen for the rest and prints that text as it appears in `--help`
//! (no-fill), with the characters roff would turn into typographic ones
//! (hyphens, quotes) escaped, so examples copy from `man` and work.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Renders `cmd`'s man page (section 1) into `w`.
pub fn render(cmd: clap::Command, w: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = cmd;
    cmd.build();
    let extra = cmd
        .get_after_long_help()
        .or_else(|| cmd.get_after_help())
        .map(|s| s.to_string());
    let has_args = cmd
        .get_arguments()
        .any(|a| !a.is_hide_set() || a.is_positional());
    let has_subcommands = cmd.get_subcommands().any(|s| !s.is_hide_set());
    // clap_mangen's VERSION section panics on a command without a version.
    let has_version = cmd
        .get_version()
        .or_else(|| cmd.get_long_version())
        .is_some();
    let man = clap_mangen::Man::new(cmd);
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if has_args {
        man.render_options_section(w)?;
    }
    if has_subcommands {
        man.render_subcommands_section(w)?;
    }
    if let Some(extra) = extra {
        w.write_all(no_fill_section("NOTES", &extra).as_bytes())?;
    }
    if has_version {
        man.render_version_section(w)?;
    }
    Ok(())
}

/// Writes the page of `cmd` and one per visible subcommand, recursively
/// (`leasectl.1`, `leasectl-list.1`, `leasectl-codev-install.1`, …) into
/// `dir`; returns the files written.
pub fn generate_tree(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    generate(cmd, dir, &mut written)?;
    Ok(written)
}

fn generate(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        generate(sub.clone(), dir, written)?;
    }
    // After build(), a subcommand's display name is `parent-sub`.
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    render(cmd, &mut page)?;
    std::fs::write(&path, page)?;
    written.push(path);
    Ok(())
}

/// A section whose text is printed line for line, as in `--help`.
pub fn no_fill_section(title: &str, text: &str) -> String {
    let mut s = format!(".SH {title}\n.nf\n");
    for line in text.lines() {
        s += &escape_line(line);
        s.push('\n');
    }
    s += ".fi\n";
    s
}

/// Escapes one line of text for roff: backslashes, hyphens (else rendered as
/// typographic hyphens, which break copied options), quotes and backquotes,
/// and a leading `.` or `'` (else taken for a request).
fn escape_line(line: &str) -> String {
    let mut s = String::with_capacity(line.len() + 8);
    if line.starts_with('.') || line.starts_with('\'') {
        s += "\\&";
    }
    for c in line.chars() {
        match c {
            '\\' => s += "\\e",
            '-' => s += "\\-",
            '\'' => s += "\\(aq",
            '`' => s += "\\(ga",
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_roff_would_reinterpret() {
        assert_eq!(
            escape_line(r".x -y 'z' `w` a\b"),
            r"\&.x \-y \(aqz\(aq \(gaw\(ga a\eb"
        );
        assert_eq!(escape_line("'q"), r"\&\(aqq");
    }

    #[test]
    fn after_help_is_kept_line_for_line() {
        let cmd = clap::Command::new("t")
            .about("A test")
            .arg(clap::Arg::new("flag").long("flag").help("A flag"))
            .after_help("EXAMPLES\n  t --flag     aligned\n  t            too");
        let mut out = Vec::new();
        render(cmd, &mut out).expect("renders");
        let page = String::from_utf8(out).expect("utf-8");
        assert!(
            page.contains(
                ".SH NOTES\n.nf\nEXAMPLES\n  t \\-\\-flag     aligned\n  t            too\n.fi\n"
            ),
            "{page}"
        );
        assert!(page.contains(".SH OPTIONS"), "{page}");
    }
}
