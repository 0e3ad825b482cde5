//! How many segment requests to keep in flight to one source: enough to
//! cover the path's bandwidth-delay product, found by measurement.
//!
//! Each segment is its own request, so a source delivers at most
//! `in flight × SEGMENT` per round trip: four 1 MiB segments cap a 300 ms
//! path at ~14 MB/s whatever its rate. [`Pace`] keeps the shortest time
//! to a segment's first byte (≈ one round trip: the sender interleaves its
//! streams, so a new one starts at once) and samples the bytes received
//! from the source (a running count, [`Pace::observe`]): the bytes of the
//! last round trip are the pipeline's depth while the pipeline is the
//! limit, and the path's bandwidth-delay product once the path is. It
//! allows twice that, plus two segments: while the pipeline is the limit
//! the depth doubles every round trip (TCP's slow start, in segments); once
//! the path is full it settles at twice the product, so a source that
//! speeds up is noticed. More in flight than the path holds only waits in
//! the sender's stream buffers, which QUIC's windows bound. A gap (a loss,
//! a stall) is smoothed by also counting a quarter of the last four round
//! trips. Sans-IO: times and counts are passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::mesh::protocol::SEGMENT;

/// Round trips of samples kept.
const HISTORY_RTTS: u32 = 4;
/// Most samples kept, and the least time between two.
const HISTORY_MAX: usize = 512;
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// A source's pipeline depth.
#[derive(Debug, Clone)]
pub(super) struct Pace {
    floor: u32,
    cap: u32,
    /// Shortest time from a request to its first byte.
    fastest: Option<Duration>,
    /// (when, bytes received from the source by then), oldest first.
    samples: VecDeque<(Instant, u64)>,
}

impl Pace {
    /// A pace that allows between `floor` and `cap` segments in flight.
    pub(super) fn new(floor: u32, cap: u32) -> Pace {
        Pace {
            floor,
            cap: cap.max(floor),
            fastest: None,
            samples: VecDeque::new(),
        }
    }

    /// A request's first byte came `after` it was sent.
    pub(super) fn first_byte(&mut self, after: Duration) {
        self.fastest = Some(self.fastest.map_or(after, |f| f.min(after)));
    }

    /// By `now`, `received` bytes in all came from the source.
    pub(super) fn observe(&mut self, now: Instant, received: u64) {
        if self
            .samples
            .back()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) < SAMPLE_EVERY)
        {
            return;
        }
        self.samples.push_back((now, received));
        let keep = self.fastest.unwrap_or(Duration::from_secs(1)) * HISTORY_RTTS;
        // Keep one sample at least `keep` old, to measure from.
        while self.samples.len() > HISTORY_MAX
            || self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= keep)
        {
            self.samples.pop_front();
        }
    }

    /// Segments that may be in flight at `now`.
    pub(super) fn limit(&self, now: Instant) -> u32 {
        let (Some(rtt), Some(&(_, latest))) = (self.fastest, self.samples.back()) else {
            return self.floor;
        };
        // The receive rate since the last sample at least `span` old (or
        // the oldest): samples may be further apart than a round trip.
        let rate_over = |span: Duration| -> f64 {
            let Some(&(t, then)) = self
                .samples
                .iter()
                .rev()
                .find(|(t, _)| now.saturating_duration_since(*t) >= span)
                .or(self.samples.front())
            else {
                return 0.0;
            };
            let secs = now.saturating_duration_since(t).as_secs_f64();
            if secs <= 0.0 {
                return 0.0;
            }
            latest.saturating_sub(then) as f64 / secs
        };
        let rate = rate_over(rtt).max(rate_over(rtt * HISTORY_RTTS));
        let per_rtt = (rate * rtt.as_secs_f64()) as u64;
        let want = (2 * per_rtt).div_ceil(SEGMENT).min(u64::from(self.cap)) as u32 + 2;
        want.clamp(self.floor, self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulate a source behind a path of `rtt` and `rate` (bytes/s) for
    /// `secs` from `start`: requests reach the sender after half a round
    /// trip, which sends segments one after another at `rate`; bytes
    /// arrive half a round trip after they were sent. A new request goes
    /// out whenever fewer than the limit are in flight. Steps of 1 ms.
    /// Returns the limit reached, the bytes of the last second, and when
    /// it ended.
    fn simulate(
        pace: &mut Pace,
        start: Instant,
        rtt: Duration,
        rate: f64,
        secs: u64,
    ) -> (u32, f64, Instant) {
        let step = Duration::from_millis(1);
        let seg = SEGMENT as f64;
        let end = start + Duration::from_secs(secs);
        // Requests on their way or queued at the sender: when they reach it.
        let mut queued: VecDeque<Instant> = VecDeque::new();
        // The segment being sent: bytes left of it.
        let mut sending: Option<f64> = None;
        // Bytes sent, with when they arrive; in flight = queued + sending
        // + sent and not all arrived.
        let mut on_wire: VecDeque<(Instant, f64, bool)> = VecDeque::new();
        let (mut received, mut inflight, mut now) = (0.0f64, 0u32, start);
        let (mut asked_at, mut last_second) = (VecDeque::new(), 0.0);
        while now < end {
            while inflight < pace.limit(now) {
                queued.push_back(now + rtt / 2);
                asked_at.push_back(now);
                inflight += 1;
            }
            // The sender: a step's worth of bytes from the current segment.
            let mut budget = rate * step.as_secs_f64();
            while budget > 0.0 {
                if sending.is_none() {
                    if queued.front().is_some_and(|t| *t <= now) {
                        queued.pop_front();
                        sending = Some(seg);
                        let asked: Instant = asked_at.pop_front().expect("asked");
                        pace.first_byte(now + rtt / 2 - asked);
                    } else {
                        break;
                    }
                }
                let left = sending.as_mut().expect("sending");
                let n = budget.min(*left);
                *left -= n;
                budget -= n;
                let last = *left <= 0.0;
                on_wire.push_back((now + rtt / 2, n, last));
                if last {
                    sending = None;
                }
            }
            now += step;
            while on_wire.front().is_some_and(|(t, _, _)| *t <= now) {
                let (_, n, last) = on_wire.pop_front().expect("checked");
                received += n;
                if now + Duration::from_secs(1) > end {
                    last_second += n;
                }
                if last {
                    inflight -= 1;
                }
            }
            pace.observe(now, received as u64);
        }
        (pace.limit(now), last_second, now)
    }

    #[test]
    fn a_long_fat_path_fills_within_a_few_round_trips() {
        // 400 Mbit/s at 300 ms: 15 MB in flight fills it.
        let rate = 50e6;
        let mut pace = Pace::new(4, 48);
        let t = Instant::now();
        assert_eq!(pace.limit(t), 4, "starts at the floor");
        let (limit, last, _) = simulate(&mut pace, t, Duration::from_millis(300), rate, 4);
        let bdp = (rate * 0.3 / SEGMENT as f64).ceil() as u32;
        assert!(
            (bdp..=2 * bdp + 4).contains(&limit),
            "settles near the bandwidth-delay product ({bdp} segments): {limit}"
        );
        assert!(
            last > 0.8 * rate,
            "full by the fourth second: {last:.0} B/s"
        );
    }

    #[test]
    fn a_short_path_stays_at_the_floor_and_the_cap_holds() {
        let t = Instant::now();
        let mut pace = Pace::new(4, 48);
        let (limit, _, _) = simulate(&mut pace, t, Duration::from_micros(200), 300e6, 3);
        assert_eq!(limit, 4, "loopback needs no deeper pipeline");

        let mut pace = Pace::new(2, 8);
        let (limit, _, _) = simulate(&mut pace, t, Duration::from_millis(500), 1e9, 30);
        assert_eq!(limit, 8, "never beyond the cap");
    }

    #[test]
    fn samples_further_apart_than_a_round_trip_do_not_inflate_it() {
        // Loopback: a 1 ms round trip at 300 MB/s, sampled every 20 ms
        // (the engine's tick): 300 KB per round trip, under the floor.
        let t = Instant::now();
        let mut pace = Pace::new(4, 48);
        pace.first_byte(Duration::from_millis(1));
        for i in 0..50u32 {
            pace.observe(t + Duration::from_millis(20) * i, 6_000_000 * u64::from(i));
        }
        assert_eq!(pace.limit(t + Duration::from_millis(20) * 49), 4);
    }

    #[test]
    fn it_shrinks_to_the_floor_when_the_source_slows() {
        let t = Instant::now();
        let mut pace = Pace::new(3, 48);
        let (limit, _, t) = simulate(&mut pace, t, Duration::from_millis(100), 100e6, 10);
        assert!(limit > 3);
        let (limit, _, _) = simulate(&mut pace, t, Duration::from_millis(100), 1e5, 30);
        assert_eq!(limit, 3, "back at the floor");
    }
}
