"""What every part of the recorder runs on: settings, telemetry (log events and metrics), logs, task supervision, the retry rule."""
