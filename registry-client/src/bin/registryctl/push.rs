//! `registryctl push`: sends a command to one agent, a group or the fleet and
//! prints it; with `--wait`, follows it until every command is acknowledged
//! or expired (a progress bar of the rollout, from its fleet events, checked
//! against `GET /api/v1/rollouts/{id}` every second so no missed event holds
//! it up), then prints the counts. Exit 1 if any command failed or expired.

use std::time::Duration;

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use registry_client::{
    AckResult, CommandRequest, CommandStatus, CommandView, Error, FleetEvent, FleetEvents,
    Operator, RolloutView,
};

use crate::Done;
use crate::cli::Push;
use crate::render::Output;

/// How often `--wait` asks the server, besides what the fleet stream says.
const POLL: Duration = Duration::from_secs(1);

pub(crate) async fn run(operator: &Operator, output: Output, push: Push) -> Result<Done, Error> {
    let request = CommandRequest::new(push.kind, push.payload);
    if let Some(agent_id) = push.target.agent {
        let command = operator.send_to_agent(&agent_id, &request).await?;
        if !push.wait {
            output.command(&command);
            return Ok(Done::Ok);
        }
        let command = wait_for_command(operator, command).await?;
        output.command(&command);
        let succeeded = command.result == Some(AckResult::Success);
        return Ok(if succeeded { Done::Ok } else { Done::Failed });
    }
    // Follow the fleet before pushing, so that no event of the rollout is missed.
    let events = if push.wait {
        operator.fleet_events().await.ok()
    } else {
        None
    };
    let started = match push.target.group {
        Some(group) => operator.send_to_group(&group, &request).await?,
        None => operator.send_to_fleet(&request).await?,
    };
    if !push.wait {
        output.rollout_started(&started);
        return Ok(Done::Ok);
    }
    let rollout = wait_for_rollout(operator, &started.rollout_id, events).await?;
    output.rollout(&rollout);
    let all_succeeded = rollout.failed == 0 && rollout.expired == 0;
    Ok(if all_succeeded {
        Done::Ok
    } else {
        Done::Failed
    })
}

/// Shows the rollout's progress until it is done; answers its last view.
async fn wait_for_rollout(
    operator: &Operator,
    rollout_id: &str,
    mut events: Option<FleetEvents>,
) -> Result<RolloutView, Error> {
    let mut rollout = operator.rollout(rollout_id).await?;
    let bar = ProgressBar::new(rollout.targeted).with_style(
        ProgressStyle::with_template(
            "{spinner} rollout {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(short(rollout_id).to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut poll = tokio::time::interval(POLL);
    while !rollout.done {
        show(&bar, &rollout);
        tokio::select! {
            event = next_event(&mut events) => match event {
                Some(FleetEvent::Rollout(view)) if view.rollout_id == rollout_id => rollout = view,
                Some(_) => {}
                // The stream ended: asking every second is enough from here.
                None => events = None,
            },
            _ = poll.tick() => rollout = operator.rollout(rollout_id).await?,
        }
    }
    show(&bar, &rollout);
    bar.finish_with_message(format!("{} done", counts(&rollout)));
    Ok(rollout)
}

/// The next fleet event; never, once there is no stream.
async fn next_event(events: &mut Option<FleetEvents>) -> Option<FleetEvent> {
    match events {
        Some(stream) => match stream.next().await {
            Some(Ok(event)) => Some(event),
            Some(Err(_)) | None => None,
        },
        None => std::future::pending().await,
    }
}

fn show(bar: &ProgressBar, rollout: &RolloutView) {
    bar.set_length(rollout.targeted);
    bar.set_position(rollout.finished());
    bar.set_message(counts(rollout));
}

fn counts(rollout: &RolloutView) -> String {
    format!(
        "pending {} delivered {} succeeded {} failed {} expired {}",
        rollout.pending, rollout.delivered, rollout.succeeded, rollout.failed, rollout.expired
    )
}

/// Waits, with a spinner, until one command is acknowledged or expired.
async fn wait_for_command(operator: &Operator, command: CommandView) -> Result<CommandView, Error> {
    let spinner = ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    let mut command = command;
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    while !command.status.is_final() {
        spinner.set_message(format!(
            "command {} {}",
            short(&command.command_id),
            command.status
        ));
        poll.tick().await;
        command = operator
            .command(&command.agent_id, &command.command_id)
            .await?;
    }
    let result = match (command.status, command.result) {
        (CommandStatus::Acknowledged, Some(result)) => result.to_string(),
        (status, _) => status.to_string(),
    };
    spinner.finish_with_message(format!("command {} {result}", short(&command.command_id)));
    Ok(command)
}

/// The last group of a UUID: random in a v7 id (its first groups are a
/// time), so enough to tell commands and rollouts apart on one screen.
fn short(id: &str) -> &str {
    id.rsplit('-').next().unwrap_or(id)
}
