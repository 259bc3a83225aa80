//! Draw a QR code in the terminal with Unicode half blocks (two modules per character).

use qrcode::{Color, EcLevel, QrCode};

/// Render `data` as lines of text, with a quiet zone.
pub(crate) fn render(data: &str) -> Result<String, qrcode::types::QrError> {
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M)?;
    let width = code.width();
    let colors = code.to_colors();
    let dark = |x: isize, y: isize| -> bool {
        x >= 0
            && y >= 0
            && (x as usize) < width
            && (y as usize) < width
            && colors[y as usize * width + x as usize] == Color::Dark
    };
    let quiet = 2isize;
    let mut out = String::new();
    let mut y = -quiet;
    while y < width as isize + quiet {
        for x in -quiet..width as isize + quiet {
            // Light terminal text on dark background is the common case: draw light modules.
            let top = !dark(x, y);
            let bottom = !dark(x, y + 1);
            out.push(match (top, bottom) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        out.push('\n');
        y += 2;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_a_square_block() {
        let art = super::render("proxim://pair?server=ws://127.0.0.1:8787/ws&code=K7P2QX").unwrap();
        let lines: Vec<&str> = art.lines().collect();
        assert!(lines.len() > 10);
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width));
    }
}
