//! Injected time and randomness, so every timing rule can be tested on a manual clock.

use std::future::Future;
use std::sync::{Arc, Mutex};

use keel_model::Millis;

/// Where the engine gets the time and how it waits.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
    /// Resolves once `now() >= deadline`.
    fn sleep_until(&self, deadline: Millis) -> impl Future<Output = ()> + Send;
}

/// Wall-clock time; for the whole process, [`SystemClock::accelerate`] may make it run faster
/// from a chosen start (a demo, a test living through days of schedules).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// An accelerated clock: `start` at the real instant `anchor`, then `speed` times as fast.
#[derive(Debug, Clone, Copy)]
struct Acceleration {
    anchor: Millis,
    start: Millis,
    speed: u32,
}

static ACCELERATION: std::sync::OnceLock<Acceleration> = std::sync::OnceLock::new();

fn real_now() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as Millis)
        .unwrap_or(0)
}

impl SystemClock {
    /// From now on, for this whole process, the time reads `start` and runs `speed` times as
    /// fast as the wall clock. Only the engine's own clock moves faster: task processes, their
    /// timeouts and the supervisor keep real time. Only the first call counts.
    pub fn accelerate(start: Millis, speed: u32) {
        let _ = ACCELERATION.set(Acceleration {
            anchor: real_now(),
            start,
            speed: speed.max(1),
        });
    }

    /// How many times as fast as the wall clock this process's clock runs (1 unless
    /// [`SystemClock::accelerate`] said otherwise).
    pub fn speed() -> Millis {
        ACCELERATION
            .get()
            .map_or(1, |acceleration| acceleration.speed.into())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let real = real_now();
        match ACCELERATION.get() {
            None => real,
            Some(acceleration) => {
                let elapsed = real.saturating_sub(acceleration.anchor);
                acceleration.start + elapsed * Millis::from(acceleration.speed)
            }
        }
    }

    async fn sleep_until(&self, deadline: Millis) {
        let speed = SystemClock::speed();
        let wait = deadline.saturating_sub(self.now()).max(0);
        // Rounded up, so that waking never comes before the deadline.
        let real = (wait + speed - 1) / speed;
        tokio::time::sleep(std::time::Duration::from_millis(real as u64)).await;
    }
}

/// A clock that moves only when a test says so.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Millis>>,
    moved: Arc<tokio::sync::watch::Sender<Millis>>,
}

impl ManualClock {
    pub fn new(start: Millis) -> ManualClock {
        let (sender, _) = tokio::sync::watch::channel(start);
        ManualClock {
            now: Arc::new(Mutex::new(start)),
            moved: Arc::new(sender),
        }
    }

    pub fn advance(&self, by: Millis) {
        let mut now = self.now.lock().unwrap();
        *now += by;
        self.moved.send_replace(*now);
    }

    pub fn set(&self, to: Millis) {
        let mut now = self.now.lock().unwrap();
        *now = to;
        self.moved.send_replace(*now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        *self.now.lock().unwrap()
    }

    async fn sleep_until(&self, deadline: Millis) {
        let mut moved = self.moved.subscribe();
        while *moved.borrow_and_update() < deadline {
            if moved.changed().await.is_err() {
                return;
            }
        }
    }
}

/// A source of uniform samples in `[0, 1)`.
pub trait Random: Send + 'static {
    fn unit(&mut self) -> f64;

    /// `bits` random bits as lowercase hex, for trace and span ids.
    fn hex(&mut self, digits: usize) -> String {
        (0..digits)
            .map(|_| char::from_digit((self.unit() * 16.0) as u32 % 16, 16).unwrap())
            .collect()
    }
}

/// SplitMix64: small, fast and good enough for jitter; not for secrets.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// Seeded from the time and the process id.
    pub fn from_entropy() -> SplitMix64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(0);
        SplitMix64(nanos ^ (u64::from(std::process::id()) << 32))
    }
}

impl Random for SplitMix64 {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}
