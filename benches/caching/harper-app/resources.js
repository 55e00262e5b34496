// The Breed table's source: the origin of benches/caching.sh (its port written into this file by
// the script), as Harper documents a caching table (`sourcedFrom`, seed 003).
const ORIGIN = 'http://127.0.0.1:ORIGIN_PORT';

class BreedSource extends Resource {
  static loadAsInstance = true;

  async get() {
    const response = await fetch(`${ORIGIN}/breeds/${encodeURIComponent(this.getId())}`);
    if (response.status === 404) return undefined;
    if (!response.ok) throw new Error(`origin answered ${response.status}`);
    return response.json();
  }
}

tables.Breed.sourcedFrom(BreedSource);
