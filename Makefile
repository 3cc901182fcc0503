# make demo: set up .venv, ingest sample_tiles/, run one search (results in demo-results/).
# make test: set up .venv (with the Keras extra), run the whole test suite and build the docs.
# make docs: the documentation site, built offline into site/ (pictures remade from sample_tiles/).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean setup serve docs pictures

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,keras,spark,serve]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	rm -f demo.gpkg demo.gpkg.*
	$(BIN)/geosearch ingest sample_tiles/ --db demo.gpkg
	$(BIN)/geosearch info --db demo.gpkg
	$(BIN)/geosearch similar sample_tiles/naip/m_4709963_se_14_1_20090818.tif --tile 3 --db demo.gpkg --top 5 --out demo-results
	@echo "demo: open demo-results/similar.geojson and demo.gpkg in QGIS; previews in demo-results/previews/"

test: $(STAMP)
	$(BIN)/ruff check geosearch tests bench docs/scripts
	$(BIN)/python -m pytest -q -rs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The README's and docs' pictures, from sample_tiles/ (needs Debian's chromium for the map page).
pictures: $(STAMP)
	$(BIN)/python docs/scripts/pictures.py

docs: pictures
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	@echo "docs: open site/index.html"

serve: $(STAMP)
	test -f demo.gpkg || $(MAKE) demo
	$(BIN)/geosearch serve --db demo.gpkg --allow-feedback

# Benchmarks (need ../shared/data beside the project): the quick set, a few minutes.
# Full runs: bench/README.md (bench/query.py: 1M vectors ~3 min, 10M ~45 min and 11 GB of disk).
bench: $(STAMP)
	$(BIN)/python bench/ingest.py --copies 20
	$(BIN)/python bench/query.py --sizes 10000,100000
	$(BIN)/python bench/quality.py --quick
	SPARK_LOCAL_IP=127.0.0.1 $(BIN)/python bench/spark.py --copies 10
	$(BIN)/python bench/serve_load.py
	$(BIN)/python bench/maps.py --tiles 100000 --dims 64
	$(BIN)/python bench/embeddings.py --only summary

lint: $(STAMP)
	$(BIN)/ruff check geosearch tests bench docs/scripts
	$(BIN)/ruff format --check geosearch tests bench docs/scripts

clean:
	rm -rf $(VENV) demo.gpkg* demo-results results geosearch.gpkg* site
