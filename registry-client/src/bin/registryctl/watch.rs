//! `registryctl watch`: prints the fleet's events as they happen, one line
//! each, once it said on standard error that it follows. When the server ends the stream (a restart, or this reader fell
//! behind) it says so on standard error and follows again.

use std::time::Duration;

use futures_util::StreamExt;
use registry_client::{Backoff, Error, Operator};

use crate::render::Output;

pub(crate) async fn run(operator: &Operator, output: Output) -> Result<(), Error> {
    let backoff = Backoff::default();
    let mut attempt: u32 = 0;
    let mut followed_once = false;
    loop {
        match operator.fleet_events().await {
            Ok(mut events) => {
                if !followed_once {
                    eprintln!(
                        "following the fleet at {} (Ctrl-C to stop)",
                        operator.base_url()
                    );
                }
                attempt = 0;
                followed_once = true;
                while let Some(event) = events.next().await {
                    match event {
                        Ok(event) => output.event(&event),
                        Err(err) => {
                            eprintln!("registryctl: {err}");
                            break;
                        }
                    }
                }
                eprintln!("registryctl: the fleet stream ended; following again");
            }
            // The first failure is the answer: a wrong URL or token is not retried.
            Err(err) if !followed_once || !err.is_transient() => return Err(err),
            Err(err) => {
                eprintln!("registryctl: {err}; trying again");
                attempt = attempt.saturating_add(1);
            }
        }
        let floor = if attempt == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(500)
        };
        tokio::time::sleep(backoff.delay(attempt, floor)).await;
    }
}
