"""The validation floor: parity runs' metrics read back, explain, host timing, device profiles and FPS
projection, the frame-rate gate, and the report. Stands on core, graph and targets; never on exporter."""
