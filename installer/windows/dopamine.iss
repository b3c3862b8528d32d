; Inno Setup 6 script: a Windows installer for the one-folder bundle in dist\Dopamine.
;
;   pyinstaller --noconfirm --distpath dist --workpath build\pyinstaller installer\dopamine.spec
;   iscc /DAppVersion=0.1.0 installer\windows\dopamine.iss
;
; writes dist\Dopamine-<version>-setup.exe. Run iscc from the repository root (paths below are relative
; to this file). Not built or tested on the Linux build machine: see installer\README.md.

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#define AppName "Dopamine"
#define AppExe "dopamine.exe"
#define Root "..\.."

[Setup]
; A fixed AppId lets a newer installer upgrade an older installation in place.
AppId={{6B0E3C1A-5F4D-4C8E-9A57-2D0E7B1F9C33}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion}
AppPublisher=Dopamine desktop contributors
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
; Per-user install needs no administrator; IT staff can still choose "all users" (or use /ALLUSERS).
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog commandline
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir={#Root}\dist
OutputBaseFilename={#AppName}-{#AppVersion}-setup
SetupIconFile={#Root}\build\icons\dopamine.ico
UninstallDisplayIcon={app}\{#AppExe}
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
; The folder holds torch and Qt: about 0.7 GB once installed.
ChangesEnvironment=yes

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked
Name: "addtopath"; Description: "Add the dopamine command to PATH"; GroupDescription: "Command line:"; Flags: unchecked

[Files]
Source: "{#Root}\dist\Dopamine\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{autoprograms}\{#AppName}"; Filename: "{app}\{#AppExe}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#AppExe}"; Tasks: desktopicon

[Registry]
; PATH for the current user (or the machine, when installed for all users) so `dopamine` works in a terminal.
Root: HKA; Subkey: "{code:EnvKey}"; ValueType: expandsz; ValueName: "Path"; \
    ValueData: "{olddata};{app}"; Tasks: addtopath; Check: NeedsAddPath(ExpandConstant('{app}'))

[Run]
Filename: "{app}\{#AppExe}"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
; Only the program folder: the hospital's data, models and privacy ledger live under the user's
; application-data folder and are kept.
Type: filesandordirs; Name: "{app}"

[Code]
function EnvKey(Param: String): String;
begin
  if IsAdminInstallMode then
    Result := 'SYSTEM\CurrentControlSet\Control\Session Manager\Environment'
  else
    Result := 'Environment';
end;

function NeedsAddPath(Dir: String): Boolean;
var
  Paths: String;
begin
  if not RegQueryStringValue(HKA, EnvKey(''), 'Path', Paths) then
    Paths := '';
  Result := Pos(';' + Uppercase(Dir) + ';', ';' + Uppercase(Paths) + ';') = 0;
end;
