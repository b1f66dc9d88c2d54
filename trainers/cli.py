"""The `zoo` command line."""

import argparse
import sys


def _cmd_list(args):
    import recipes

    for name in recipes.list():
        recipe_class = recipes.get_class(name)
        presets = ", ".join(sorted(recipe_class.presets))
        print(f"{name:<12} presets: {presets} (default {recipe_class.default_preset})")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="zoo", description="Train, evaluate and export transformer recipes.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    listing = commands.add_parser("list", help="list the registered recipes and their presets")
    listing.set_defaults(handler=_cmd_list)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from trainers.quiet import import_tensorflow

    import_tensorflow()
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
