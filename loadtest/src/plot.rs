//! `--plot FILE.png`: the latency percentile curve (x: percentile on a log scale of
//! 1/(1-q), y: latency on a log scale), drawn with plotters into an RGB buffer and encoded with the
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
///
/// Both axes are logarithmic, as HdrHistogram plots its percentiles: x is
/// log10(1/(1-q)), so p90, p99, p99.9 ... are evenly spaced, and latency is on a log
/// scale too, so a tail a hundred times the median does not flatten the rest.
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
        let (y_min, y_max) = latency_range_ms(series);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .margin_right(40)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..5f64, (y_min..y_max).log_scale())
            .map_err(|e| anyhow!("plot: {e}"))?;
        chart
            .configure_mesh()
            .x_desc("percentile (log scale: each step is ten times rarer)")
            .y_desc("latency from the scheduled send time, ms (log scale)")
            .x_label_formatter(&|x| {
                let q = 100.0 * (1.0 - 10f64.powf(-x));
                let text = format!("{q:.3}");
                format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
            })
            .y_label_formatter(&|ms| {
                let text = format!("{ms:.3}");
                text.trim_end_matches('0').trim_end_matches('.').to_owned()
            })
            .x_labels(6)
            .draw()
            .map_err(|e| anyhow!("plot: {e}"))?;
        for (index, (label, points)) in series.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points
                        .iter()
                        .map(|(q, us)| (x_of(*q), (us / 1000.0).max(y_min))),
                    color.stroke_width(2),
                ))
                .map_err(|e| anyhow!("plot: {e}"))?
                .label(legend(label, points))
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

/// A curve's name with the figures that matter read off it: p50, p99, max.
fn legend(label: &str, points: &[(f64, f64)]) -> String {
    let at = |q: f64| {
        points
            .iter()
            .find(|(p, _)| *p >= q)
            .or(points.last())
            .map_or(0.0, |(_, us)| us / 1000.0)
    };
    format!(
        "{label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(50.0),
        at(99.0),
        at(100.0)
    )
}

/// The latency axis in ms: a little beyond the smallest and largest points, never
/// empty and never reaching 0 (a log scale cannot show it).
fn latency_range_ms(series: &[(String, Vec<(f64, f64)>)]) -> (f64, f64) {
    let values = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1 / 1000.0))
        .filter(|ms| *ms > 0.0 && ms.is_finite());
    let (low, high) = values.fold((f64::MAX, 0f64), |(lo, hi), ms| (lo.min(ms), hi.max(ms)));
    if high == 0.0 {
        return (0.001, 1.0);
    }
    let low = (low / 1.5).max(0.000_1);
    (low, (high * 1.5).max(low * 10.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_range_covers_every_point_and_stays_above_zero() {
        let series = vec![(
            "a".to_owned(),
            vec![(0.0, 0.0), (50.0, 200.0), (99.9, 150_000.0)],
        )];
        let (low, high) = latency_range_ms(&series);
        assert!(low > 0.0 && low < 0.2, "{low}");
        assert!(high > 150.0, "{high}");
        assert_eq!(latency_range_ms(&[]), (0.001, 1.0));
    }

    #[test]
    fn the_legend_reads_p50_p99_and_max_off_the_curve() {
        let points = vec![
            (0.0, 100.0),
            (50.0, 250.0),
            (99.0, 4_000.0),
            (100.0, 9_000.0),
        ];
        assert_eq!(
            legend("h2c", &points),
            "h2c: p50 0.25 ms, p99 4.00 ms, max 9.00 ms"
        );
    }
}
