"""End-to-end tests: headless Chromium against a live app and the local OneDrive emulator."""
