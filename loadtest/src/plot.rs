//! `--plot FILE.png`: the latency percentile curve (x: percentile on a log scale of
//! 1/(1-q), y: latency), drawn with plotters into an RGB buffer and encoded with the
//! `png` crate. plotters' own PNG encoder would pull in the whole `image` crate;
//! its text needs a TrueType font, taken from the system (DejaVu/Liberation).

use std::path::Path;

use anyhow::{anyhow, Context};
use plotters::prelude::*;
use plotters::style::FontStyle;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 600;

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = FONT_CANDIDATES
                .iter()
                .find_map(|path| std::fs::read(path).ok())
                .ok_or_else(|| {
                    format!("no TrueType font found (looked at {FONT_CANDIDATES:?}); install fonts-dejavu-core")
                })?;
            // plotters keeps fonts for the life of the process; leaking one file once is that.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| "the font file could not be parsed".to_owned())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// One curve per series: (label, points of (percentile 0-100, latency µs)).
pub fn percentile_png(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    register_font()?;
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
        // x = log10(1/(1-q)): 0 at p0, 2 at p99, 4 at p99.99.
        let x_of = |q: f64| (1.0 / (1.0 - (q / 100.0).min(0.99999))).log10();
        let y_max = series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|p| p.1 / 1000.0))
            .fold(0.1f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..5f64, 0f64..y_max)
            .map_err(|e| anyhow!("plot: {e}"))?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .x_label_formatter(&|x| {
                let q = 100.0 * (1.0 - 10f64.powf(-x));
                let text = format!("{q:.3}");
                format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
            })
            .x_labels(6)
            .draw()
            .map_err(|e| anyhow!("plot: {e}"))?;
        for (index, (label, points)) in series.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|(q, us)| (x_of(*q), us / 1000.0)),
                    color.stroke_width(2),
                ))
                .map_err(|e| anyhow!("plot: {e}"))?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| anyhow!("plot: {e}"))?;
        root.present().map_err(|e| anyhow!("plot: {e}"))?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("png header")?;
    writer.write_image_data(&rgb).context("png data")?;
    writer.finish().context("png finish")?;
    Ok(())
}
