//! File names from the other side, made safe to create: one path component, no hidden or
//! reserved names, bounded length; and ` (n)` suffixes that never overwrite.

/// Longest name the receiver writes, in bytes (file systems allow 255; the part-file prefix
/// and suffix need room).
pub(super) const MAX_SAFE_NAME_BYTES: usize = 200;

/// A name for `name` that is safe to create inside any directory: no path separators, no
/// `..`, no leading dots, no control or reserved characters, at most 200 bytes; `"file"` if
/// nothing usable is left.
pub fn sanitize_file_name(name: &str) -> String {
    // Keep only the last path component, whichever separator the sender's OS uses.
    let last = name
        .split(['/', '\\'])
        .rev()
        .find(|part| !part.trim().is_empty() && *part != "." && *part != "..")
        .unwrap_or("");
    let mut safe: String = last
        .chars()
        .map(|c| match c {
            c if c.is_control() => '_',
            ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c => c,
        })
        .collect();
    // No hidden files, no names ending in dots or spaces (Windows strips them).
    safe = safe
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end_matches(|c: char| c == '.' || c.is_whitespace())
        .to_owned();
    if is_windows_device_name(&safe) {
        safe.insert(0, '_');
    }
    if safe.len() > MAX_SAFE_NAME_BYTES {
        safe = truncate_keeping_extension(&safe, MAX_SAFE_NAME_BYTES);
    }
    if safe.is_empty() {
        "file".to_owned()
    } else {
        safe
    }
}

/// `name` for `n == 0`, else `stem (n).ext`.
pub(super) fn numbered_name(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem} ({n}).{ext}"),
        _ => format!("{name} ({n})"),
    }
}

fn is_windows_device_name(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or("").to_ascii_uppercase();
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit())
}

/// Cut `name` to at most `max` bytes on a char boundary, keeping a short extension.
fn truncate_keeping_extension(name: &str, max: usize) -> String {
    let ext = name
        .rsplit_once('.')
        .map(|(_, ext)| ext)
        .filter(|ext| ext.len() <= 16);
    let budget = max - ext.map_or(0, |ext| ext.len() + 1);
    let mut cut = budget.min(name.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let stem = &name[..cut];
    match ext {
        Some(ext) => format!("{stem}.{ext}"),
        None => stem.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn sanitizer_keeps_names_inside_the_directory() {
        let cases = [
            ("photo.jpg", "photo.jpg"),
            ("../../etc/passwd", "passwd"),
            ("..\\..\\Windows\\system.ini", "system.ini"),
            ("/absolute/path/x.txt", "x.txt"),
            ("dir/", "dir"),
            ("..", "file"),
            ("../..", "file"),
            (".", "file"),
            ("", "file"),
            ("   ", "file"),
            (".bashrc", "bashrc"),
            ("...hidden...", "hidden"),
            ("a\0b\nc", "a_b_c"),
            ("what?:*|<>\".txt", "what_______.txt"),
            ("CON", "_CON"),
            ("com1.txt", "_com1.txt"),
            ("console.txt", "console.txt"),
            ("résumé 2026.pdf", "résumé 2026.pdf"),
        ];
        for (input, expected) in cases {
            assert_eq!(sanitize_file_name(input), expected, "{input:?}");
        }
        let long = format!("{}.tar.gz", "é".repeat(300));
        let safe = sanitize_file_name(&long);
        assert!(safe.len() <= MAX_SAFE_NAME_BYTES, "{}", safe.len());
        assert!(safe.ends_with("é.gz"), "{safe}");
        for input in [
            "../../etc/passwd",
            "a/../../b",
            "\\\\server\\share\\..",
            "x/..",
        ] {
            let safe = sanitize_file_name(input);
            assert!(!safe.contains('/') && !safe.contains('\\') && !safe.starts_with('.'));
            assert_eq!(Path::new(&safe).components().count(), 1, "{input:?}");
        }
    }

    #[test]
    fn numbered_names() {
        assert_eq!(numbered_name("a.txt", 0), "a.txt");
        assert_eq!(numbered_name("a.txt", 2), "a (2).txt");
        assert_eq!(numbered_name("archive", 1), "archive (1)");
        assert_eq!(numbered_name("x.tar.gz", 1), "x.tar (1).gz");
    }
}
