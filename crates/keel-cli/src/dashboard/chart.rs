//! Small line charts drawn on the server as inline SVG: one value per partition, oldest left,
//! with a gap where a partition has no value. The geometry (scale, round ticks, the line's path)
//! is a pure function of the values, tested here; [`svg`] only writes it out, escaping every
//! piece of text.

use std::fmt::Write;

use super::view::escape_xml;

/// The drawing's size in SVG units; it scales to the page's width.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 160.0;
/// Room left of the plot for the tick labels, and around it.
const LEFT: f64 = 56.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 22.0;

/// One tick of the y axis: where it is drawn and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub y: f64,
    pub value: f64,
    pub label: String,
}

/// Where everything of a chart goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    pub ticks: Vec<Tick>,
    /// One per value: where its point is, or `None` for a gap.
    pub points: Vec<Option<(f64, f64)>>,
    /// One per value, gap or not: where it is along the x axis.
    pub xs: Vec<f64>,
    /// The line through the points, broken at every gap (`M x y L x y ... M x y`).
    pub path: String,
}

/// The geometry of a chart of `values`, oldest first. `from_zero` keeps 0 on the axis (counts
/// and durations); otherwise the axis spans only the values (a metric such as an accuracy).
/// Values that are not finite are gaps.
pub fn geometry(values: &[Option<f64>], from_zero: bool) -> Geometry {
    let finite: Vec<f64> = values
        .iter()
        .flatten()
        .copied()
        .filter(|value| value.is_finite())
        .collect();
    let (mut low, mut high) = match (
        finite.iter().copied().reduce(f64::min),
        finite.iter().copied().reduce(f64::max),
    ) {
        (Some(low), Some(high)) => (low, high),
        _ => (0.0, 1.0),
    };
    if from_zero {
        low = low.min(0.0);
        high = high.max(0.0);
    }
    if high - low <= f64::EPSILON * high.abs().max(1.0) {
        // All values equal: give them room on both sides, or above 0.
        let pad = if high == 0.0 { 1.0 } else { high.abs() / 10.0 };
        if from_zero && low >= 0.0 {
            high += pad;
        } else {
            low -= pad;
            high += pad;
        }
    }
    let tick_values = nice_ticks(low, high);
    let axis_low = tick_values.first().copied().unwrap_or(low);
    let axis_high = tick_values.last().copied().unwrap_or(high);
    let span = (axis_high - axis_low).max(f64::MIN_POSITIVE);
    let plot_height = HEIGHT - TOP - BOTTOM;
    let y_of = |value: f64| TOP + (axis_high - value) / span * plot_height;
    let decimals = tick_values
        .get(1)
        .zip(tick_values.first())
        .map_or(0, |(second, first)| decimals(second - first));
    let ticks = tick_values
        .iter()
        .map(|&value| Tick {
            y: round(y_of(value)),
            value,
            label: format!("{value:.decimals$}"),
        })
        .collect();
    let plot_width = WIDTH - LEFT - RIGHT;
    let x_of = |index: usize| {
        if values.len() <= 1 {
            LEFT + plot_width / 2.0
        } else {
            LEFT + index as f64 * plot_width / (values.len() - 1) as f64
        }
    };
    let xs: Vec<f64> = (0..values.len()).map(|index| round(x_of(index))).collect();
    let points: Vec<Option<(f64, f64)>> = values
        .iter()
        .zip(&xs)
        .map(|(value, &x)| {
            value
                .filter(|value| value.is_finite())
                .map(|value| (x, round(y_of(value))))
        })
        .collect();
    let mut path = String::new();
    let mut drawing = false;
    for point in &points {
        match point {
            Some((x, y)) => {
                let _ = write!(
                    path,
                    "{}{x} {y}",
                    if drawing {
                        " L"
                    } else if path.is_empty() {
                        "M"
                    } else {
                        " M"
                    }
                );
                drawing = true;
            }
            None => drawing = false,
        }
    }
    Geometry {
        ticks,
        points,
        xs,
        path,
    }
}

/// Round ticks from at or below `low` to at or above `high`: 3 or 4 of them, a step of 1, 2,
/// 2.5 or 5 times a power of ten.
pub fn nice_ticks(low: f64, high: f64) -> Vec<f64> {
    if !low.is_finite() || !high.is_finite() || high <= low {
        return vec![0.0, 0.5, 1.0];
    }
    let span = high - low;
    let mut magnitude = 10f64.powf((span / 3.0).log10().floor());
    for _ in 0..4 {
        for factor in [1.0, 2.0, 2.5, 5.0] {
            let step = factor * magnitude;
            let first = (low / step + 1e-9).floor();
            let last = (high / step - 1e-9).ceil();
            let intervals = last - first;
            if intervals <= 3.0 {
                let mut ticks: Vec<f64> = (0..=intervals as i64)
                    .map(|index| clean((first + index as f64) * step))
                    .collect();
                while ticks.len() < 3 {
                    let next = clean(ticks[ticks.len() - 1] + step);
                    ticks.push(next);
                }
                return ticks;
            }
        }
        magnitude *= 10.0;
    }
    vec![low, (low + high) / 2.0, high]
}

/// Decimals a label needs to show a step exactly (0.25 needs 2).
fn decimals(step: f64) -> usize {
    (0..=6)
        .find(|&places| {
            let scaled = step * 10f64.powi(places as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.abs().max(1.0)
        })
        .unwrap_or(6)
}

/// A tick value without the dust of binary fractions (0.30000000000000004 is 0.3).
fn clean(value: f64) -> f64 {
    let cleaned = (value * 1e9).round() / 1e9;
    if cleaned == 0.0 { 0.0 } else { cleaned }
}

/// A coordinate to one decimal, which is finer than a pixel.
fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// One point of a chart as the page shows it.
pub struct Point {
    /// Where it is on the x axis (its partition); the oldest and the newest are written below.
    pub label: String,
    pub value: Option<f64>,
    /// What a pointer over the point says (partition, value, outcome); escaped when written.
    pub title: String,
    /// The class that colours it ([`super::view::outcome_class`]).
    pub class: &'static str,
    /// The page the point links to.
    pub url: Option<String>,
}

/// The chart as an `<svg>` element with `id`, its points linked and titled. Every piece of text
/// is escaped; the rest are numbers.
pub fn svg(id: &str, label: &str, points: &[Point], from_zero: bool) -> String {
    let values: Vec<Option<f64>> = points.iter().map(|point| point.value).collect();
    let geometry = geometry(&values, from_zero);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="chart" id="{}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}">"#,
        escape_xml(id),
        escape_xml(label)
    );
    for tick in &geometry.ticks {
        let _ = write!(
            out,
            r#"<line class="axis" x1="{LEFT}" x2="{}" y1="{y}" y2="{y}"/><text class="tick" x="{}" y="{}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            tick.y + 4.0,
            escape_xml(&tick.label),
            y = tick.y,
        );
    }
    // The oldest partition under the left end of the axis, the newest under the right.
    let baseline = HEIGHT - 6.0;
    let ends = [
        (points.first(), geometry.xs.first(), "start"),
        (points.last(), geometry.xs.last(), "end"),
    ];
    for (index, (point, x, anchor)) in ends.into_iter().enumerate() {
        if let (Some(point), Some(x)) = (point, x)
            && (index == 0 || points.len() > 1)
        {
            let anchor = if points.len() == 1 { "middle" } else { anchor };
            let _ = write!(
                out,
                r#"<text class="partition" x="{x}" y="{baseline}" text-anchor="{anchor}">{}</text>"#,
                escape_xml(&point.label)
            );
        }
    }
    if !geometry.path.is_empty() {
        let _ = write!(out, r#"<path class="line" d="{}"/>"#, geometry.path);
    }
    for (point, position) in points.iter().zip(&geometry.points) {
        let Some((x, y)) = position else { continue };
        let circle = format!(
            r#"<circle class="point {}" cx="{x}" cy="{y}" r="3.5"><title>{}</title></circle>"#,
            escape_xml(point.class),
            escape_xml(&point.title)
        );
        match &point.url {
            Some(url) => {
                let _ = write!(out, r#"<a href="{}">{circle}</a>"#, escape_xml(url));
            }
            None => out.push_str(&circle),
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers_three_or_four_of_them() {
        assert_eq!(nice_ticks(0.0, 0.73), [0.0, 0.25, 0.5, 0.75]);
        assert_eq!(nice_ticks(0.0, 1.0), [0.0, 0.5, 1.0]);
        assert_eq!(nice_ticks(0.0, 30.0), [0.0, 10.0, 20.0, 30.0]);
        assert_eq!(nice_ticks(0.0, 1234.0), [0.0, 500.0, 1000.0, 1500.0]);
        assert_eq!(nice_ticks(-3.0, 5.0), [-5.0, 0.0, 5.0]);
        assert_eq!(nice_ticks(0.51, 0.55), [0.5, 0.52, 0.54, 0.56]);
        for (low, high) in [(0.0, 7.0), (1e-4, 3e-4), (-90.0, -10.0), (3.0, 1e9)] {
            let ticks = nice_ticks(low, high);
            assert!((3..=4).contains(&ticks.len()), "{low}..{high}: {ticks:?}");
            assert!(
                ticks[0] <= low && *ticks.last().unwrap() >= high,
                "{ticks:?}"
            );
        }
    }

    #[test]
    fn labels_show_the_step_exactly() {
        let chart = geometry(&[Some(0.0), Some(0.73)], true);
        let labels: Vec<&str> = chart.ticks.iter().map(|tick| tick.label.as_str()).collect();
        assert_eq!(labels, ["0.00", "0.25", "0.50", "0.75"]);
        let chart = geometry(&[Some(12.0), Some(30.0)], true);
        let labels: Vec<&str> = chart.ticks.iter().map(|tick| tick.label.as_str()).collect();
        assert_eq!(labels, ["0", "10", "20", "30"]);
    }

    #[test]
    fn values_map_onto_the_axis_oldest_left() {
        let chart = geometry(&[Some(0.0), Some(15.0), Some(30.0)], true);
        assert_eq!(chart.points[0], Some((LEFT, HEIGHT - BOTTOM)));
        assert_eq!(
            chart.points[1],
            Some((LEFT + (WIDTH - LEFT - RIGHT) / 2.0, 74.0))
        );
        assert_eq!(chart.points[2], Some((WIDTH - RIGHT, TOP)));
        assert_eq!(chart.ticks[0].y, HEIGHT - BOTTOM);
        assert_eq!(chart.ticks[3].y, TOP);
        assert_eq!(chart.path, "M56 138 L343 74 L630 10");
    }

    #[test]
    fn a_missing_value_is_a_gap_in_the_line_not_a_zero() {
        let chart = geometry(
            &[Some(1.0), None, Some(2.0), Some(f64::NAN), Some(3.0)],
            true,
        );
        assert_eq!(chart.points[1], None);
        assert_eq!(chart.points[3], None);
        assert_eq!(chart.path.matches('M').count(), 3, "{}", chart.path);
        assert!(
            !chart.path.contains('L'),
            "no segment crosses a gap: {}",
            chart.path
        );
        let joined = geometry(&[Some(1.0), Some(2.0), None], true);
        assert_eq!(joined.path.matches('L').count(), 1);
    }

    #[test]
    fn a_single_point_sits_in_the_middle() {
        let chart = geometry(&[Some(5.0)], true);
        let (x, y) = chart.points[0].unwrap();
        assert_eq!(x, LEFT + (WIDTH - LEFT - RIGHT) / 2.0);
        assert!((TOP..=HEIGHT - BOTTOM).contains(&y));
        assert!((3..=4).contains(&chart.ticks.len()));
        assert_eq!(chart.path, format!("M{x} {y}"));
    }

    #[test]
    fn equal_values_get_an_axis_around_them() {
        let chart = geometry(&[Some(0.5), Some(0.5), Some(0.5)], false);
        let first = chart.ticks.first().unwrap().value;
        let last = chart.ticks.last().unwrap().value;
        assert!(first < 0.5 && last > 0.5, "{:?}", chart.ticks);
        let y = chart.points[0].unwrap().1;
        assert!(y > TOP && y < HEIGHT - BOTTOM);
        let zeros = geometry(&[Some(0.0), Some(0.0)], true);
        assert_eq!(zeros.ticks.first().unwrap().value, 0.0);
        assert_eq!(zeros.points[0].unwrap().1, HEIGHT - BOTTOM);
        let none = geometry(&[None, None], true);
        assert!(none.path.is_empty() && none.points.iter().all(Option::is_none));
    }

    #[test]
    fn negative_values_are_below_zero() {
        let chart = geometry(&[Some(-3.0), Some(5.0)], true);
        let values: Vec<f64> = chart.ticks.iter().map(|tick| tick.value).collect();
        assert_eq!(values, [-5.0, 0.0, 5.0]);
        let zero = chart.ticks[1].y;
        assert!(chart.points[0].unwrap().1 > zero);
        assert!(chart.points[1].unwrap().1 < zero);
        let below = geometry(&[Some(-2.0), Some(-1.0)], false);
        assert!(below.ticks.iter().all(|tick| tick.value <= 0.0));
    }

    #[test]
    fn the_svg_escapes_its_text() {
        let points = [Point {
            label: "<b>".into(),
            value: Some(1.0),
            title: "<script>\"x\"&".into(),
            class: "failed",
            url: Some("/ui/p?a=1&b=2".into()),
        }];
        let svg = svg("chart-metric-a\"b", "a<b", &points, true);
        assert!(svg.contains("&lt;script&gt;&quot;x&quot;&amp;"), "{svg}");
        assert!(svg.contains(r#"href="/ui/p?a=1&amp;b=2""#), "{svg}");
        assert!(svg.contains(r#"id="chart-metric-a&quot;b""#), "{svg}");
        assert!(svg.contains(">&lt;b&gt;</text>"), "{svg}");
        assert!(!svg.contains("<script"));
    }
}
