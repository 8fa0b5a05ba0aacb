//! The synthetic season: 30 teams, a schedule with days off, players with their own scoring
//! distributions, injuries, and points prop lines from a noisy bookmaker. Everything is a pure
//! function of the seed, so the feed, the tests and `hoops season` agree on every number.

use serde_json::{Value, json};

use crate::date::Date;
use crate::rng::Rng;

/// The first day of the season window. Any date from here to [`season_end`] is valid; dates
/// outside it simply have no games.
pub fn season_start() -> Date {
    Date::from_ymd(2026, 10, 20).expect("valid")
}

/// The last day of the season window (inclusive).
pub fn season_end() -> Date {
    Date::from_ymd(2027, 4, 15).expect("valid")
}

/// Days without games in every season, whatever the seed: Thanksgiving, Christmas Eve and the
/// All-Star break. Each seed adds a few random off days on top.
pub const FIXED_OFF_DAYS: &[&str] = &[
    "2026-11-26",
    "2026-12-24",
    "2027-02-12",
    "2027-02-13",
    "2027-02-14",
    "2027-02-15",
    "2027-02-16",
    "2027-02-17",
];

/// The chance that an ordinary day of the window has no games.
const RANDOM_OFF_DAY: f64 = 0.05;
const PLAYERS_PER_TEAM: usize = 12;
/// Expected minutes by roster slot; they add up to the 240 minutes of a regulation game.
const SLOT_MINUTES: [f64; PLAYERS_PER_TEAM] = [
    36.0, 34.0, 32.0, 30.0, 28.0, 24.0, 20.0, 14.0, 10.0, 7.0, 3.0, 2.0,
];
/// Typical points by roster slot, before each player's own talent.
const SLOT_POINTS: [f64; PLAYERS_PER_TEAM] = [
    26.0, 20.0, 17.0, 14.0, 12.0, 10.0, 8.0, 6.0, 4.0, 3.0, 1.5, 1.0,
];
/// How many of each team's players get a points prop line.
const PROP_SLOTS: usize = 6;

const TEAMS: [(&str, &str); 30] = [
    ("ASH", "Ashford Owls"),
    ("BAY", "Bayport Pilots"),
    ("BRK", "Brookline Foxes"),
    ("CAS", "Castle Rock Miners"),
    ("CED", "Cedar Falls Comets"),
    ("DUN", "Dunmore Wolves"),
    ("ELM", "Elmwood Herons"),
    ("FAL", "Fallbrook Rangers"),
    ("GLN", "Glendale Sparks"),
    ("HAR", "Harbor City Gulls"),
    ("IRV", "Irvington Knights"),
    ("JAS", "Jasper Bison"),
    ("KEN", "Kenmore Lynx"),
    ("LAK", "Lakeside Storm"),
    ("MAP", "Maple Grove Hawks"),
    ("NEW", "Newhaven Tides"),
    ("OAK", "Oakridge Rams"),
    ("PIN", "Pinecrest Bears"),
    ("QUA", "Quarry Hill Jets"),
    ("RIV", "Riverton Otters"),
    ("SAL", "Salem Ridge Kings"),
    ("TAM", "Tamarack Blaze"),
    ("UNI", "Union Bay Sharks"),
    ("VAL", "Valley Forge Eagles"),
    ("WES", "Westfield Vipers"),
    ("WIL", "Willow Creek Moose"),
    ("XEN", "Xenia Flyers"),
    ("YOR", "Yorktown Coyotes"),
    ("ZEP", "Zephyr Hills Suns"),
    ("NOR", "Northgate Cougars"),
];

const FIRST: [&str; 32] = [
    "Aaron", "Ben", "Caleb", "Dario", "Eli", "Felix", "Gabe", "Hugo", "Isaac", "Jalen", "Kofi",
    "Luca", "Malik", "Nico", "Omar", "Pavel", "Quinn", "Rafael", "Sami", "Theo", "Uriel", "Victor",
    "Wes", "Xavier", "Yusuf", "Zach", "Andre", "Bruno", "Cole", "Dmitri", "Emeka", "Finn",
];
const LAST: [&str; 40] = [
    "Adams",
    "Baker",
    "Castillo",
    "Diallo",
    "Edwards",
    "Fischer",
    "Garcia",
    "Hughes",
    "Ibaka",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Mensah",
    "Novak",
    "Okafor",
    "Petrov",
    "Quinlan",
    "Reyes",
    "Sato",
    "Turner",
    "Ueda",
    "Vasquez",
    "Walker",
    "Xu",
    "Young",
    "Zubac",
    "Bell",
    "Cruz",
    "Dumont",
    "Evans",
    "Ferreira",
    "Grant",
    "Holm",
    "Ivanov",
    "Jones",
    "Kim",
    "Lindqvist",
    "Moreau",
    "Nakamura",
    "Ortiz",
];
const INJURIES: [&str; 8] = [
    "ankle",
    "knee",
    "hamstring",
    "back",
    "illness",
    "wrist",
    "calf",
    "concussion protocol",
];
const TIPOFFS: [&str; 5] = ["19:00", "19:30", "20:00", "20:30", "22:00"];

#[derive(Debug, Clone, PartialEq)]
pub struct Team {
    pub code: &'static str,
    pub name: &'static str,
    /// Multiplies the team's players' scoring.
    pub offense: f64,
    /// Multiplies the scoring of the team's opponents (below 1 is a good defence).
    pub defense: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Player {
    pub id: String,
    pub name: String,
    pub team: usize,
    pub slot: usize,
    /// Expected minutes when the whole roster is healthy.
    pub minutes: f64,
    /// Expected points per minute played.
    pub ppm: f64,
    /// Standard deviation of points over [`Player::minutes`] minutes.
    pub sd: f64,
    pub rpm: f64,
    pub apm: f64,
    form_amp: f64,
    form_period: f64,
    form_phase: f64,
}

impl Player {
    /// The player's form on a day of the season: a slow wave around 1.0, so recent games say
    /// more than the season average.
    pub fn form(&self, day: i32) -> f64 {
        1.0 + self.form_amp
            * (std::f64::consts::TAU * f64::from(day) / self.form_period + self.form_phase).sin()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayerLine {
    pub player: usize,
    pub minutes: u32,
    pub points: u32,
    pub rebounds: u32,
    pub assists: u32,
    pub fgm: u32,
    pub fga: u32,
    pub tpm: u32,
    pub tpa: u32,
    pub ftm: u32,
    pub fta: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Game {
    pub id: String,
    pub home: usize,
    pub away: usize,
    pub tipoff: &'static str,
    pub home_score: u32,
    pub away_score: u32,
    pub overtime: bool,
    pub lines: Vec<PlayerLine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Out,
    Questionable,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Out => "out",
            Status::Questionable => "questionable",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Injury {
    pub player: usize,
    pub status: Status,
    pub injury: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prop {
    /// Index into the day's games.
    pub game: usize,
    pub player: usize,
    pub line: f64,
    pub over_price: i32,
    pub under_price: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Day {
    pub date: Date,
    pub games: Vec<Game>,
    pub injuries: Vec<Injury>,
    pub props: Vec<Prop>,
}

/// The four things the feed serves per date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Scoreboard,
    Boxscores,
    Injuries,
    Props,
}

impl Source {
    pub const ALL: [Source; 4] = [
        Source::Scoreboard,
        Source::Boxscores,
        Source::Injuries,
        Source::Props,
    ];

    /// Accepts `schedule` as another name for the scoreboard.
    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "scoreboard" | "schedule" => Some(Source::Scoreboard),
            "boxscores" => Some(Source::Boxscores),
            "injuries" => Some(Source::Injuries),
            "props" => Some(Source::Props),
            _ => None,
        }
    }

    /// The feed's path segment, which is also the canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Scoreboard => "scoreboard",
            Source::Boxscores => "boxscores",
            Source::Injuries => "injuries",
            Source::Props => "props",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Season {
    pub seed: u64,
    pub teams: Vec<Team>,
    pub players: Vec<Player>,
    /// One entry per day of the window, off days included.
    pub days: Vec<Day>,
}

#[derive(Clone, Copy)]
struct InjuryState {
    /// Out before this day, questionable on it.
    until: Option<Date>,
    injury: &'static str,
}

impl Season {
    pub fn generate(seed: u64) -> Season {
        let root = Rng::new(seed);
        let mut r_roster = root.fork(1);
        let mut r_sched = root.fork(2);
        let mut r_games = root.fork(3);
        let mut r_inj = root.fork(4);
        let mut r_book = root.fork(5);

        let teams: Vec<Team> = TEAMS
            .iter()
            .map(|&(code, name)| Team {
                code,
                name,
                offense: r_roster.normal(1.0, 0.04).clamp(0.9, 1.1),
                defense: r_roster.normal(1.0, 0.04).clamp(0.9, 1.1),
            })
            .collect();
        let mut players = Vec::with_capacity(teams.len() * PLAYERS_PER_TEAM);
        for (t, team) in teams.iter().enumerate() {
            for slot in 0..PLAYERS_PER_TEAM {
                let minutes = SLOT_MINUTES[slot];
                let points = SLOT_POINTS[slot] * r_roster.range_f64(0.8, 1.25) * team.offense;
                players.push(Player {
                    id: format!("{}-{:02}", team.code, slot + 1),
                    name: format!("{} {}", r_roster.pick(&FIRST), r_roster.pick(&LAST)),
                    team: t,
                    slot,
                    minutes,
                    ppm: points / minutes,
                    sd: 0.22 * points + 1.5,
                    rpm: r_roster.range_f64(0.08, 0.33),
                    apm: r_roster.range_f64(0.04, 0.25),
                    form_amp: r_roster.range_f64(0.0, 0.18),
                    form_period: r_roster.range_f64(18.0, 60.0),
                    form_phase: r_roster.range_f64(0.0, std::f64::consts::TAU),
                });
            }
        }

        let fixed_off: Vec<Date> = FIXED_OFF_DAYS
            .iter()
            .map(|s| s.parse().expect("valid"))
            .collect();
        let n_teams = teams.len();
        let mut played = vec![0u32; n_teams];
        let mut home_games = vec![0u32; n_teams];
        let mut last_played: Vec<Option<Date>> = vec![None; n_teams];
        let mut injury = vec![
            InjuryState {
                until: None,
                injury: INJURIES[0]
            };
            players.len()
        ];
        let mut days = Vec::new();
        let (start, end) = (season_start(), season_end());
        let mut date = start;
        while date <= end {
            let t = date.days_since(start);
            // Injuries evolve every day, games or not.
            let mut status: Vec<Option<Status>> = vec![None; players.len()];
            for (p, state) in injury.iter_mut().enumerate() {
                if state.until.is_some_and(|until| date > until) {
                    state.until = None;
                }
                if state.until.is_none() && r_inj.chance(0.0035) {
                    state.until = Some(date.add_days(r_inj.range(1, 20) as i32));
                    state.injury = *r_inj.pick(&INJURIES);
                }
                status[p] = match state.until {
                    Some(until) if date < until => Some(Status::Out),
                    Some(_) => Some(Status::Questionable),
                    None if r_inj.chance(0.008) => {
                        state.injury = *r_inj.pick(&INJURIES);
                        Some(Status::Questionable)
                    }
                    None => None,
                };
            }

            let off = fixed_off.contains(&date) || r_sched.chance(RANDOM_OFF_DAY);
            let mut games = Vec::new();
            if !off {
                let n_games = r_sched.range(3, 12) as usize;
                // Teams that have played least, and did not play yesterday, go first.
                let mut keyed: Vec<(f64, usize)> = (0..n_teams)
                    .map(|team| {
                        let b2b = last_played[team] == Some(date.add_days(-1));
                        let key = f64::from(played[team])
                            + if b2b { 2.5 } else { 0.0 }
                            + r_sched.f64() * 3.0;
                        (key, team)
                    })
                    .collect();
                keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let mut chosen: Vec<usize> =
                    keyed.iter().take(n_games * 2).map(|&(_, t)| t).collect();
                r_sched.shuffle(&mut chosen);
                for pair in chosen.chunks(2) {
                    let (a, b) = (pair[0], pair[1]);
                    let a_home = match home_games[a].cmp(&home_games[b]) {
                        std::cmp::Ordering::Less => true,
                        std::cmp::Ordering::Greater => false,
                        std::cmp::Ordering::Equal => r_sched.chance(0.5),
                    };
                    let (home, away) = if a_home { (a, b) } else { (b, a) };
                    let tipoff = *r_sched.pick(&TIPOFFS);
                    games.push(simulate(
                        &mut r_games,
                        &teams,
                        &players,
                        &status,
                        date,
                        t,
                        home,
                        away,
                        tipoff,
                    ));
                    played[home] += 1;
                    played[away] += 1;
                    home_games[home] += 1;
                    last_played[home] = Some(date);
                    last_played[away] = Some(date);
                }
                games.sort_by(|a, b| a.tipoff.cmp(b.tipoff).then(a.id.cmp(&b.id)));
            }

            let playing: Vec<usize> = games.iter().flat_map(|g| [g.home, g.away]).collect();
            let injuries: Vec<Injury> = status
                .iter()
                .enumerate()
                .filter_map(|(p, s)| {
                    let s = (*s)?;
                    playing.contains(&players[p].team).then(|| Injury {
                        player: p,
                        status: s,
                        injury: injury[p].injury,
                    })
                })
                .collect();

            let mut props = Vec::new();
            for (g, game) in games.iter().enumerate() {
                for (team, opp, home) in
                    [(game.away, game.home, false), (game.home, game.away, true)]
                {
                    for slot in 0..PROP_SLOTS {
                        let p = team * PLAYERS_PER_TEAM + slot;
                        if status[p] == Some(Status::Out) {
                            continue;
                        }
                        let pl = &players[p];
                        let mut estimate = pl.ppm
                            * pl.minutes
                            * pl.form(t)
                            * teams[opp].defense
                            * if home { 1.02 } else { 0.98 };
                        if status[p] == Some(Status::Questionable) {
                            estimate *= 0.9;
                        }
                        estimate += r_book.normal(0.0, 1.8);
                        let line = estimate.max(0.0).floor() + 0.5;
                        let over_price = -110 + r_book.range(0, 20) as i32 - 10;
                        props.push(Prop {
                            game: g,
                            player: p,
                            line,
                            over_price,
                            under_price: -220 - over_price,
                        });
                    }
                }
            }

            days.push(Day {
                date,
                games,
                injuries,
                props,
            });
            date = date.add_days(1);
        }

        Season {
            seed,
            teams,
            players,
            days,
        }
    }

    /// The day, if `date` is inside the season window.
    pub fn day(&self, date: Date) -> Option<&Day> {
        let i = date.days_since(season_start());
        usize::try_from(i).ok().and_then(|i| self.days.get(i))
    }

    pub fn games_on(&self, date: Date) -> usize {
        self.day(date).map_or(0, |d| d.games.len())
    }

    /// What the feed serves for `source` on `date`. With `hide_games` the date is shown as a
    /// day without games (the feed's `no_games` fault).
    pub fn view(&self, source: Source, date: Date, hide_games: bool) -> Value {
        let day = if hide_games { None } else { self.day(date) };
        let games = day.map_or(&[][..], |d| &d.games[..]);
        let d = date.to_string();
        match source {
            Source::Scoreboard => json!({
                "date": d,
                "games": games.iter().map(|g| self.game_json(g)).collect::<Vec<_>>(),
            }),
            Source::Boxscores => json!({
                "date": d,
                "games": games.iter().map(|g| self.boxscore_json(date, g)).collect::<Vec<_>>(),
            }),
            Source::Injuries => json!({
                "date": d,
                "games": games.len(),
                "injuries": day.map_or(vec![], |day| day.injuries.iter().map(|i| {
                    let p = &self.players[i.player];
                    json!({
                        "player_id": p.id,
                        "name": p.name,
                        "team": self.teams[p.team].code,
                        "status": i.status.as_str(),
                        "injury": i.injury,
                    })
                }).collect()),
            }),
            Source::Props => json!({
                "date": d,
                "games": games.len(),
                "props": day.map_or(vec![], |day| day.props.iter().map(|pr| {
                    let p = &self.players[pr.player];
                    let g = &day.games[pr.game];
                    let home = g.home == p.team;
                    let opp = if home { g.away } else { g.home };
                    json!({
                        "game_id": g.id,
                        "player_id": p.id,
                        "name": p.name,
                        "team": self.teams[p.team].code,
                        "opponent": self.teams[opp].code,
                        "home": home,
                        "market": "points",
                        "line": pr.line,
                        "over_price": pr.over_price,
                        "under_price": pr.under_price,
                    })
                }).collect()),
            }),
        }
    }

    /// One game's box score, if that game was played on `date`.
    pub fn boxscore(&self, date: Date, game_id: &str, hide_games: bool) -> Option<Value> {
        if hide_games {
            return None;
        }
        let game = self.day(date)?.games.iter().find(|g| g.id == game_id)?;
        Some(self.boxscore_json(date, game))
    }

    fn game_json(&self, g: &Game) -> Value {
        json!({
            "game_id": g.id,
            "home": self.teams[g.home].code,
            "home_name": self.teams[g.home].name,
            "away": self.teams[g.away].code,
            "away_name": self.teams[g.away].name,
            "tipoff": g.tipoff,
            "status": "final",
            "home_score": g.home_score,
            "away_score": g.away_score,
            "overtime": g.overtime,
        })
    }

    fn boxscore_json(&self, date: Date, g: &Game) -> Value {
        let players: Vec<Value> = g
            .lines
            .iter()
            .map(|l| {
                let p = &self.players[l.player];
                let home = p.team == g.home;
                let opp = if home { g.away } else { g.home };
                json!({
                    "player_id": p.id,
                    "name": p.name,
                    "team": self.teams[p.team].code,
                    "opponent": self.teams[opp].code,
                    "home": home,
                    "minutes": l.minutes,
                    "points": l.points,
                    "rebounds": l.rebounds,
                    "assists": l.assists,
                    "fgm": l.fgm,
                    "fga": l.fga,
                    "tpm": l.tpm,
                    "tpa": l.tpa,
                    "ftm": l.ftm,
                    "fta": l.fta,
                })
            })
            .collect();
        json!({
            "game_id": g.id,
            "date": date.to_string(),
            "home": self.teams[g.home].code,
            "away": self.teams[g.away].code,
            "home_score": g.home_score,
            "away_score": g.away_score,
            "players": players,
        })
    }

    /// A digest of everything the feed would ever serve: equal seeds give equal fingerprints.
    pub fn fingerprint(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for day in &self.days {
            for source in Source::ALL {
                for byte in self.view(source, day.date, false).to_string().bytes() {
                    hash ^= u64::from(byte);
                    hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
        }
        hash
    }

    /// A short JSON summary, for `hoops season`.
    pub fn summary(&self) -> Value {
        let game_days: Vec<&Day> = self.days.iter().filter(|d| !d.games.is_empty()).collect();
        let off_days: Vec<String> = self
            .days
            .iter()
            .filter(|d| d.games.is_empty())
            .map(|d| d.date.to_string())
            .collect();
        let games: usize = game_days.iter().map(|d| d.games.len()).sum();
        let mut per_team = vec![0u32; self.teams.len()];
        for d in &game_days {
            for g in &d.games {
                per_team[g.home] += 1;
                per_team[g.away] += 1;
            }
        }
        json!({
            "seed": self.seed,
            "fingerprint": format!("{:016x}", self.fingerprint()),
            "window": { "start": season_start().to_string(), "end": season_end().to_string() },
            "teams": self.teams.iter().map(|t| json!({"code": t.code, "name": t.name})).collect::<Vec<_>>(),
            "players": self.players.len(),
            "game_days": game_days.len(),
            "off_days": off_days,
            "games": games,
            "games_per_team": { "min": per_team.iter().min(), "max": per_team.iter().max() },
            "injury_reports": self.days.iter().map(|d| d.injuries.len()).sum::<usize>(),
            "props": self.days.iter().map(|d| d.props.len()).sum::<usize>(),
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn simulate(
    r: &mut Rng,
    teams: &[Team],
    players: &[Player],
    status: &[Option<Status>],
    date: Date,
    t: i32,
    home: usize,
    away: usize,
    tipoff: &'static str,
) -> Game {
    let (y, m, d) = date.ymd();
    let id = format!(
        "{y:04}{m:02}{d:02}-{}-{}",
        teams[away].code, teams[home].code
    );
    let mut lines = Vec::new();
    let mut scores = [0u32; 2];
    for (side, (team, opp, is_home)) in [(away, home, false), (home, away, true)]
        .into_iter()
        .enumerate()
    {
        let roster = team * PLAYERS_PER_TEAM..(team + 1) * PLAYERS_PER_TEAM;
        let available: Vec<usize> = roster
            .filter(|&p| match status[p] {
                Some(Status::Out) => false,
                Some(Status::Questionable) => r.chance(0.7),
                None => true,
            })
            .collect();
        let total: f64 = available.iter().map(|&p| players[p].minutes).sum();
        let factor = (240.0 / total.max(1.0)).min(1.45);
        for p in available {
            let pl = &players[p];
            let minutes = (pl.minutes * factor + r.normal(0.0, 2.5))
                .clamp(0.0, 44.0)
                .round();
            if minutes < 1.0 {
                continue;
            }
            let mean = pl.ppm
                * minutes
                * pl.form(t)
                * teams[opp].defense
                * if is_home { 1.02 } else { 0.98 };
            let sd = pl.sd * (minutes / pl.minutes).sqrt();
            let points = r.normal(mean, sd).round().max(0.0) as u32;
            let (fgm, fga, tpm, tpa, ftm, fta) = shooting(r, points);
            let rebounds = r.normal(pl.rpm * minutes, 1.5).round().max(0.0) as u32;
            let assists = r.normal(pl.apm * minutes, 1.2).round().max(0.0) as u32;
            scores[side] += points;
            lines.push(PlayerLine {
                player: p,
                minutes: minutes as u32,
                points,
                rebounds,
                assists,
                fgm,
                fga,
                tpm,
                tpa,
                ftm,
                fta,
            });
        }
    }
    // No ties in basketball: overtime adds a few baskets until someone wins.
    let mut overtime = false;
    while scores[0] == scores[1] {
        overtime = true;
        let side = r.range(0, 1) as usize;
        let team = if side == 0 { away } else { home };
        let candidates: Vec<usize> = (0..lines.len())
            .filter(|&i| players[lines[i].player].team == team)
            .collect();
        if candidates.is_empty() {
            scores[side] += 2;
            continue;
        }
        let i = *r.pick(&candidates);
        lines[i].points += 2;
        lines[i].fgm += 1;
        lines[i].fga += 1;
        scores[side] += 2;
    }
    Game {
        id,
        home,
        away,
        tipoff,
        home_score: scores[1],
        away_score: scores[0],
        overtime,
        lines,
    }
}

/// Splits points into a consistent shooting line: points = 2·(fgm − tpm) + 3·tpm + ftm.
fn shooting(r: &mut Rng, points: u32) -> (u32, u32, u32, u32, u32, u32) {
    let mut ftm = ((f64::from(points) * r.range_f64(0.08, 0.25)).round() as u32).min(points);
    let mut rest = points - ftm;
    let mut tpm = ((f64::from(rest) * r.range_f64(0.0, 0.35) / 3.0).round() as u32).min(rest / 3);
    if (rest - 3 * tpm) % 2 == 1 {
        if tpm > 0 {
            tpm -= 1;
        } else {
            ftm += 1;
            rest -= 1;
        }
    }
    let twos = (rest - 3 * tpm) / 2;
    let fgm = twos + tpm;
    let tpa = tpm + (f64::from(tpm) * r.range_f64(0.8, 2.0)).round() as u32 + r.range(0, 1) as u32;
    let fga = (fgm + (f64::from(fgm) * r.range_f64(0.6, 1.3)).round() as u32).max(tpa + twos);
    let fta = ftm + (f64::from(ftm) * r.range_f64(0.1, 0.35)).round() as u32;
    (fgm, fga, tpm, tpa, ftm, fta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shooting_lines_add_up() {
        let mut r = Rng::new(3);
        for points in 0..60 {
            for _ in 0..20 {
                let (fgm, fga, tpm, tpa, ftm, fta) = shooting(&mut r, points);
                assert_eq!(2 * (fgm - tpm) + 3 * tpm + ftm, points);
                assert!(fgm <= fga && tpm <= tpa && tpa <= fga && ftm <= fta);
            }
        }
    }

    #[test]
    fn box_scores_add_up_to_the_score() {
        let season = Season::generate(11);
        for day in season.days.iter().take(40) {
            for g in &day.games {
                let team_points = |team: usize| -> u32 {
                    g.lines
                        .iter()
                        .filter(|l| season.players[l.player].team == team)
                        .map(|l| l.points)
                        .sum()
                };
                assert_eq!(team_points(g.home), g.home_score);
                assert_eq!(team_points(g.away), g.away_score);
                assert_ne!(g.home_score, g.away_score);
            }
        }
    }
}
