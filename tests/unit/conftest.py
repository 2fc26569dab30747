from tests.unit.promtool_fixtures import promtool  # noqa: F401  (the fixture)
