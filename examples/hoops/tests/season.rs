//! The season is a pure function of its seed, and it looks like a basketball season.

mod common;

use std::collections::HashSet;

use hoops::date::Date;
use hoops::season::{self, FIXED_OFF_DAYS, Season, Source, Status};

#[test]
fn a_seed_fixes_the_whole_season() {
    let a = Season::generate(7);
    let b = Season::generate(7);
    assert_eq!(a, b);
    assert_eq!(a.fingerprint(), b.fingerprint());
    let other = Season::generate(8);
    assert_ne!(a.fingerprint(), other.fingerprint());
    assert_ne!(a.days, other.days);
}

#[test]
fn hoops_season_prints_the_same_thing_every_time() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hoops"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let summary = run(&["season", "--seed", "7"]);
    assert_eq!(summary, run(&["season", "--seed=7"]));
    let fingerprint = format!("{:016x}", Season::generate(7).fingerprint());
    assert!(summary.contains(&fingerprint), "{summary}");
    let props = run(&[
        "season",
        "--seed",
        "7",
        "--date",
        "2026-11-03",
        "--source",
        "props",
    ]);
    assert_eq!(
        props,
        run(&[
            "season",
            "--seed",
            "7",
            "--date",
            "2026-11-03",
            "--source",
            "props"
        ])
    );
    let parsed: serde_json::Value = serde_json::from_str(&props).unwrap();
    let expected = Season::generate(7).view(Source::Props, "2026-11-03".parse().unwrap(), false);
    assert_eq!(parsed, expected);
}

#[test]
fn the_schedule_is_realistic() {
    let s = Season::generate(common::SEED);
    assert_eq!(s.teams.len(), 30);
    let mut per_team = vec![0u32; 30];
    let mut game_days = 0;
    for day in &s.days {
        let mut playing = HashSet::new();
        for g in &day.games {
            assert_ne!(g.home, g.away);
            assert!(
                playing.insert(g.home),
                "{} plays twice on {}",
                g.home,
                day.date
            );
            assert!(
                playing.insert(g.away),
                "{} plays twice on {}",
                g.away,
                day.date
            );
            per_team[g.home] += 1;
            per_team[g.away] += 1;
        }
        game_days += usize::from(!day.games.is_empty());
    }
    // Games on most days, some days with none.
    assert!(
        game_days * 10 > s.days.len() * 8,
        "{game_days} of {}",
        s.days.len()
    );
    assert!(game_days < s.days.len());
    for off in FIXED_OFF_DAYS {
        assert_eq!(s.games_on(off.parse().unwrap()), 0, "{off}");
    }
    for count in per_team {
        assert!((70..=95).contains(&count), "{count} games in a season");
    }
    // Outside the window there are no games, and the feed's answer says so.
    for outside in ["2026-10-19", "2027-04-16", "2030-01-01"] {
        let date: Date = outside.parse().unwrap();
        assert_eq!(s.games_on(date), 0);
        assert_eq!(
            s.view(Source::Scoreboard, date, false)["games"],
            serde_json::json!([])
        );
        assert_eq!(s.view(Source::Props, date, false)["games"], 0);
    }
    assert_eq!(
        s.day(season::season_start()).unwrap().date,
        season::season_start()
    );
    assert_eq!(
        s.day(season::season_end()).unwrap().date,
        season::season_end()
    );
}

#[test]
fn players_injuries_and_props_hang_together() {
    let s = Season::generate(common::SEED);
    let mut points = vec![(0u64, 0u64); s.players.len()];
    let mut injuries = 0;
    for day in &s.days {
        let out: HashSet<usize> = day
            .injuries
            .iter()
            .filter(|i| i.status == Status::Out)
            .map(|i| i.player)
            .collect();
        injuries += day.injuries.len();
        for g in &day.games {
            for line in &g.lines {
                assert!(
                    !out.contains(&line.player),
                    "an injured player played on {}",
                    day.date
                );
                assert!(line.minutes >= 1 && line.minutes <= 48);
                let entry = &mut points[line.player];
                entry.0 += u64::from(line.points);
                entry.1 += 1;
            }
        }
        for prop in &day.props {
            assert!(!out.contains(&prop.player), "a prop on a player ruled out");
            assert_eq!(prop.line.fract(), 0.5, "lines are x.5, so never a push");
            assert_eq!(prop.over_price + prop.under_price, -220);
        }
    }
    assert!(injuries > 100, "only {injuries} injury report lines");
    // Each player has his own scoring level: a team's first option outscores its ninth man.
    let avg = |p: usize| points[p].0 as f64 / points[p].1.max(1) as f64;
    for team in 0..30 {
        assert!(avg(team * 12) > avg(team * 12 + 8) + 5.0, "team {team}");
    }
}
