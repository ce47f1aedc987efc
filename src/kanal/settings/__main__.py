"""``python -m kanal.settings``: print the Markdown settings reference."""

from kanal.settings.render import render_settings_markdown

__all__: list[str] = []

if __name__ == "__main__":
    print(render_settings_markdown(), end="")
